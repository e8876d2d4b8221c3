"""One synthetic image: a cluttered, textured background, the figures drawn over it back to
front, a camera-like finish, and the COCO annotations of what was drawn."""

import cv2
import numpy as np

from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

from .figures import sample_people, sample_walkers

IMAGE_SIZE_RANGE = (240, 400)  # width and height are drawn independently
FACE_KEYPOINTS = ("nose", "left_eye", "right_eye")

# cv2 drawing takes integer points; 4 fractional bits give sub-pixel accurate outlines.
_SHIFT = 4


def _random_colour(rng):
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _draw_clutter(rng, image, count):
    """Random rectangles, circles, ellipses, polygons, lines and limb-like bars."""
    height, width = image.shape[:2]
    for _ in range(count):
        kind = rng.integers(6)
        colour = _random_colour(rng)
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        size = int(rng.integers(5, max(6, min(width, height) // 3)))
        filled = -1 if rng.random() < 0.7 else int(rng.integers(1, 4))
        if kind == 0:
            cv2.rectangle(
                image,
                centre,
                (centre[0] + size, centre[1] + int(rng.integers(5, 80))),
                colour,
                filled,
            )
        elif kind == 1:
            cv2.circle(image, centre, size // 2, colour, filled)
        elif kind == 2:
            axes = (size // 2, int(rng.integers(2, size // 2 + 3)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, filled)
        elif kind == 3:
            points = np.array(centre) + rng.integers(-size, size + 1, (int(rng.integers(3, 7)), 2))
            cv2.fillPoly(image, [points.astype(np.int32)], colour)
        else:  # straight bars and lines, thin to limb-thick, so a single limb is no cue
            end = np.array(centre) + rng.integers(-2 * size, 2 * size + 1, 2)
            cv2.line(image, centre, (int(end[0]), int(end[1])), colour, int(rng.integers(1, 10)))


def _background(rng, width, height):
    """Gradient + low-frequency colour noise + blurred far clutter + sharp near clutter."""
    # float32 throughout, channel by channel: float64 or broadcasting over a trailing axis
    # of 3 makes this the slowest step of the generator.
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = np.array([np.sin(angle), np.cos(angle)], np.float32)
    ramp = np.arange(width, dtype=np.float32)[None, :] * (dx / width) + np.arange(
        height, dtype=np.float32
    )[:, None] * (dy / height)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    image = cv2.merge([ramp * (e - s) + s for s, e in zip(start, end)])
    coarse = rng.normal(
        0, rng.uniform(10, 40), (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)
    )
    image += cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image, 0, 255).astype(np.uint8)

    _draw_clutter(rng, image, int(rng.integers(4, 16)))
    sigma = rng.uniform(1.0, 4.0)
    image = cv2.GaussianBlur(image, (0, 0), sigma)
    _draw_clutter(rng, image, int(rng.integers(1, 6)))
    return image


def render_image(rng):
    """One image (H x W x 3 BGR uint8) and its COCO annotations (without ids)."""
    width, height = (int(v) for v in rng.integers(IMAGE_SIZE_RANGE[0], IMAGE_SIZE_RANGE[1] + 1, 2))
    image = _background(rng, width, height)
    people = sample_people(rng, width, height)
    return _draw_people(rng, image, people)


def render_clip(rng, width, height, num_people, num_frames):
    """The frames of a clip of ``num_people`` figures walking across a still background
    (:func:`~.figures.sample_walkers`: crossing and hiding each other), each frame with its
    COCO annotations (without ids) and a ``track_id`` per person, the same in every frame.
    A person outside the frame has no annotation."""
    background = _background(rng, width, height)
    frames = []
    for people in sample_walkers(rng, width, height, num_people, num_frames):
        inside = [p for p in people if _visible_extent(p, width, height)]
        image, annotations = _draw_people(rng, background.copy(), inside)
        for person, annotation in zip(inside, annotations):
            annotation["track_id"] = person["id"]
        frames.append((image, annotations))
    return frames


def _visible_extent(person, width, height, margin=8):
    """Whether at least ``margin`` pixels of the figure's box are inside the image each way."""
    x0, y0, x1, y1 = person["box"]
    return x1 > margin and y1 > margin and x0 < width - margin and y0 < height - margin


def _draw_people(rng, image, people):
    """``people`` drawn on ``image`` back to front, the camera-like finish, and their COCO
    annotations (of what was drawn; without ids)."""
    height, width = image.shape[:2]
    # owner[y, x] = 1 + index of the front-most figure at that pixel (0: background).
    owner = np.zeros((height, width), np.uint8)
    masks = []
    for index, person in enumerate(people):
        mask = np.zeros((height, width), np.uint8)
        for polygon, colour in person["shapes"]:
            points = [np.round(polygon * (1 << _SHIFT)).astype(np.int32)]
            cv2.fillPoly(image, points, colour, cv2.LINE_8, _SHIFT)
            cv2.fillPoly(mask, points, 1, cv2.LINE_8, _SHIFT)
        owner[mask > 0] = index + 1
        masks.append(mask)

    # Camera-like finish: slight defocus sometimes, sensor noise always.
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.8))
    noise = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 8)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)

    annotations = []
    for index, (person, mask) in enumerate(zip(people, masks)):
        keypoints = []
        for name, (x, y) in zip(COCO_PERSON_KEYPOINT_NAMES, person["joints"]):
            if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
                keypoints += [0, 0, 0]
                continue
            hidden = owner[int(round(y)), int(round(x))] > index + 1
            if person["facing"] == "back" and name in FACE_KEYPOINTS:
                hidden = True
            keypoints += [round(float(x), 2), round(float(y), 2), 1 if hidden else 2]
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        segmentation = [
            cv2.approxPolyDP(c, 1.0, True).reshape(-1).astype(int).tolist() for c in contours
        ]
        annotations.append(
            dict(
                category_id=1,
                bbox=[x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                area=int(xs.size),
                iscrowd=0,
                keypoints=keypoints,
                num_keypoints=sum(v > 0 for v in keypoints[2::3]),
                segmentation=[polygon for polygon in segmentation if len(polygon) >= 6],
                facing=person["facing"],
            )
        )
    return image, annotations
