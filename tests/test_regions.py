"""Region planning (app/inference/regions.py): pure geometry, no model."""

from __future__ import annotations

import pytest

from app.inference.regions import MAX_REGIONS, full_frame, plan_regions

HD = (1920, 1080)
MODEL = (416, 416)


def _inside(box, wh) -> bool:
    return 0 <= box[0] < box[2] <= wh[0] and 0 <= box[1] < box[3] <= wh[1]


def test_one_small_box_gets_a_model_sized_square_centred_on_it() -> None:
    (r,) = plan_regions(HD, [(900, 500, 940, 600)], [], MODEL)
    assert r == (712, 342, 1128, 758)
    assert all(isinstance(v, int) for v in r)


def test_square_is_shifted_inside_the_frame_at_the_corners() -> None:
    assert plan_regions(HD, [(0, 0, 20, 30)], [], MODEL) == ((0, 0, 416, 416),)
    assert plan_regions(HD, [(1900, 1050, 1920, 1080)], [], MODEL) == ((1504, 664, 1920, 1080),)
    # boxes partly outside the frame are clipped first
    assert plan_regions(HD, [(-50, -50, 10, 10)], [], MODEL) == ((0, 0, 416, 416),)


def test_a_box_larger_than_the_input_gets_a_larger_square_with_margin() -> None:
    (r,) = plan_regions(HD, [], [(800, 300, 1000, 800)], MODEL)  # 500 high, + 20% each side = 700
    assert r[2] - r[0] == r[3] - r[1] == 700 and _inside(r, HD)
    assert r[0] <= 800 and r[2] >= 1000 and r[1] <= 300 and r[3] >= 800


def test_a_box_needing_more_than_the_largest_crop_gives_the_whole_frame() -> None:
    assert plan_regions(HD, [(500, 100, 1100, 1000)], [], MODEL) == full_frame(*HD)


def test_overlapping_squares_merge_into_one_square_around_both() -> None:
    regions = plan_regions(HD, [(900, 500, 940, 600)], [(1000, 520, 1040, 620)], MODEL)
    assert len(regions) == 1
    (r,) = regions
    assert r[2] - r[0] == r[3] - r[1] and _inside(r, HD)
    assert r[0] <= 900 and r[2] >= 1040


def test_distant_boxes_keep_separate_squares() -> None:
    regions = plan_regions(HD, [(100, 100, 140, 200), (1700, 800, 1740, 900)], [], MODEL)
    assert len(regions) == 2
    a, b = regions
    assert not (min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]))


def test_too_many_regions_are_merged_or_fall_back() -> None:
    # five small boxes far apart in a 4K frame: merged down to MAX_REGIONS squares
    uhd = (3840, 2160)
    boxes = [(100, 100, 120, 140), (1500, 100, 1520, 140), (3000, 100, 3020, 140), (100, 1900, 120, 1940),
             (3000, 1900, 3020, 1940)]  # fmt: skip
    regions = plan_regions(uhd, boxes, [], MODEL)
    assert len(regions) <= MAX_REGIONS and all(_inside(r, uhd) for r in regions)
    # in 1080p they cannot be merged under the size limit: the whole frame
    hd_boxes = [(100, 100, 120, 140), (900, 100, 920, 140), (1700, 100, 1720, 140), (100, 900, 120, 940),
                (1700, 900, 1720, 940)]  # fmt: skip
    assert plan_regions(HD, hd_boxes, [], MODEL) == full_frame(*HD)


def test_regions_covering_most_of_the_frame_give_the_whole_frame() -> None:
    # three separate 416 squares in a 1280x720 frame cover 56% of it
    boxes = [(100, 100, 120, 140), (620, 500, 640, 540), (1150, 100, 1170, 140)]
    assert plan_regions((1280, 720), boxes, [], MODEL) == full_frame(1280, 720)
    assert len(plan_regions((1280, 720), boxes[:1], [], MODEL)) == 1


@pytest.mark.parametrize("wh", [(416, 416), (640, 360), (320, 240)])
def test_frames_not_larger_than_the_input_use_the_whole_frame(wh) -> None:
    assert plan_regions(wh, [(10, 10, 50, 50)], [], MODEL) == full_frame(*wh)


def test_disabled_or_nothing_to_look_at_gives_the_whole_frame() -> None:
    assert plan_regions(HD, [(900, 500, 940, 600)], [], MODEL, enabled=False) == full_frame(*HD)
    assert plan_regions(HD, [], [], MODEL) == full_frame(*HD)
