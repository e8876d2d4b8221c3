"""Articulated figures with the 17 COCO joints: a random human-plausible pose, clothing and
skin colours, the filled shapes that draw the figure, and its placement in an image."""

import functools

import cv2
import numpy as np

from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

MAX_PEOPLE = 4

# A figure is built in a canonical frame in units of its height (top of head to soles):
# origin at the mid-hip, +y down, +x towards the person's LEFT, i.e. as a person facing the
# camera. A back view of the same pose is its mirror image with the SAME labels, which is
# how back-facing figures are made (see _place).
KEYPOINT_INDEX = {name: i for i, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}
SIDES = ((1, "left_"), (-1, "right_"))  # sign of canonical x, keypoint prefix
# fmt: off
# BGR palettes, light to dark skin; black, browns, blond, grey, red hair. Jittered per person.
SKIN_TONES = [
    (196, 224, 255), (125, 194, 241), (105, 172, 224), (66, 134, 198), (36, 85, 141), (23, 51, 92),
]
HAIR_COLOURS = [
    (20, 20, 25), (30, 45, 70), (40, 70, 110), (90, 170, 210), (150, 150, 150), (30, 60, 150),
]
# fmt: on

_CIRCLE_ANGLES = np.linspace(0, 2 * np.pi, 16, endpoint=False)
_UNIT_CIRCLE = np.stack([np.cos(_CIRCLE_ANGLES), np.sin(_CIRCLE_ANGLES)], axis=1)


def _direction(angle, side):
    """Unit vector at `angle` (radians) from straight down, positive = away from the body
    midline on `side` (+1 the person's left, -1 their right), so limbs are mirror-symmetric."""
    return np.array([side * np.sin(angle), np.cos(angle)])


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _sample_pose(rng):
    """Canonical joint positions (17 x 2) and the extra points needed to draw the figure."""
    joints = np.zeros((len(COCO_PERSON_KEYPOINT_NAMES), 2))
    k = KEYPOINT_INDEX
    # Segment lengths are standard anthropometric ratios of body height; a random factor
    # below 1 imitates foreshortening of a limb pointing towards or away from the camera.
    lean = rng.uniform(-0.2, 0.2)  # torso bend at the waist
    width = rng.uniform(0.8, 1.0)  # < 1: body slightly turned away from the camera
    torso_up = np.array([np.sin(lean), -np.cos(lean)])
    torso_across = np.array([np.cos(lean), np.sin(lean)])
    neck = 0.30 * rng.uniform(0.93, 1.0) * torso_up
    for side, prefix in SIDES:
        joints[k[prefix + "hip"]] = (side * 0.06 * width, 0.0)
        joints[k[prefix + "shoulder"]] = neck + side * 0.105 * width * torso_across

    head_tilt = lean + rng.uniform(-0.25, 0.25)
    head_up = np.array([np.sin(head_tilt), -np.cos(head_tilt)])
    head_center = neck + 0.11 * head_up
    head_rot = _rotation(head_tilt)
    yaw = rng.uniform(-1.0, 1.0)  # face turned a little sideways: features shift together

    def on_head(x, y):
        return head_center + head_rot @ np.array([x, y])

    joints[k["nose"]] = on_head(0.014 * yaw, 0.016)
    joints[k["left_eye"]] = on_head(0.021 + 0.01 * yaw, -0.004)
    joints[k["right_eye"]] = on_head(-0.021 + 0.01 * yaw, -0.004)
    joints[k["left_ear"]] = on_head(0.048, 0.002)
    joints[k["right_ear"]] = on_head(-0.048, 0.002)

    hands, feet = {}, {}
    for side, prefix in SIDES:
        # Arms: mostly hanging, sometimes raised up to overhead; the elbow bends either way
        # (a 2D projection of an arm rotated about its axis), mostly a little. Like COCO's
        # people, most poses are common ones: a from-scratch model on a CPU budget must
        # learn them in minutes.
        if rng.random() < 0.7:
            upper = np.deg2rad(rng.uniform(-15, 40))
        else:
            upper = np.deg2rad(rng.uniform(40, 170))
        bend = 130 if rng.random() < 0.4 else 45
        fore = upper + np.deg2rad(rng.uniform(-bend, bend))
        elbow = joints[k[prefix + "shoulder"]] + 0.17 * rng.uniform(0.8, 1.0) * _direction(
            upper, side
        )
        fore_dir = _direction(fore, side)
        wrist = elbow + 0.15 * rng.uniform(0.8, 1.0) * fore_dir
        joints[k[prefix + "elbow"]], joints[k[prefix + "wrist"]] = elbow, wrist
        hands[side] = wrist + 0.025 * fore_dir

        # Legs: mostly standing or walking, sometimes a leg lifted sideways with the lower
        # leg hanging back towards vertical.
        if rng.random() < 0.85:
            thigh = np.deg2rad(rng.uniform(-8, 18))
            shank = np.deg2rad(rng.uniform(-12, 25))
        else:
            thigh = np.deg2rad(rng.uniform(20, 70))
            shank = np.deg2rad(rng.uniform(-10, np.rad2deg(thigh)))
        knee = joints[k[prefix + "hip"]] + 0.245 * rng.uniform(0.85, 1.0) * _direction(thigh, side)
        ankle = knee + 0.245 * rng.uniform(0.85, 1.0) * _direction(shank, side)
        joints[k[prefix + "knee"]], joints[k[prefix + "ankle"]] = knee, ankle
        feet[side] = ankle + np.array([side * 0.012, 0.022])

    extra = dict(
        neck=neck,
        torso_up=torso_up,
        torso_across=torso_across,
        head_center=head_center,
        head_rot=head_rot,
        yaw=yaw,
        hands=hands,
        feet=feet,
    )
    return joints, extra


def _capsule(a, b, radius_a, radius_b):
    """Convex outline of a limb segment tapering from radius_a at a to radius_b at b."""
    points = np.concatenate([a + radius_a * _UNIT_CIRCLE, b + radius_b * _UNIT_CIRCLE])
    return cv2.convexHull(points.astype(np.float32))[:, 0, :].astype(np.float64)


def _ellipse(center, half_width, half_height, rot=None, start=0.0, end=360.0):
    """Ellipse (or, with start/end in degrees, the part cut off by the chord between them),
    in the frame rotated by `rot`; angles run clockwise from the +x axis (y points down)."""
    t = np.deg2rad(np.linspace(start, end, 24, endpoint=end - start < 360))
    local = np.stack([half_width * np.cos(t), half_height * np.sin(t)], axis=1)
    return center + (local if rot is None else local @ rot.T)


def _jitter(rng, colour, amount=12):
    return tuple(
        int(c) for c in np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    )


def _sample_style(rng):
    return dict(
        skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))]),
        hair=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]),
        shirt=tuple(int(c) for c in rng.integers(0, 256, 3)),
        trousers=tuple(int(c) for c in rng.integers(0, 200, 3)),
        shoes=tuple(int(c) for c in rng.integers(0, 90, 3)),
        long_sleeves=rng.random() < 0.5,
        shorts=rng.random() < 0.25,
        hairline=rng.uniform(195, 215),
    )


def _figure_shapes(joints, extra, style, facing):
    """Canonical polygons with their colours, in drawing order (later ones on top)."""
    k = KEYPOINT_INDEX
    j = {name: joints[i] for name, i in k.items()}
    skin, shapes = style["skin"], []
    for side, prefix in SIDES:
        hip, knee, ankle = j[prefix + "hip"], j[prefix + "knee"], j[prefix + "ankle"]
        shapes.append((_capsule(hip, knee, 0.045, 0.036), style["trousers"]))
        shapes.append(
            (_capsule(knee, ankle, 0.034, 0.026), skin if style["shorts"] else style["trousers"])
        )
        shapes.append((_ellipse(extra["feet"][side], 0.036, 0.018), style["shoes"]))

    # Torso: shirt from just outside the shoulders down over the waistband; trousers' top
    # from the waist to the crotch.
    up, across = extra["torso_up"], extra["torso_across"]
    left_shoulder = j["left_shoulder"] + 0.025 * across + 0.02 * up
    right_shoulder = j["right_shoulder"] - 0.025 * across + 0.02 * up
    left_hip, right_hip = j["left_hip"] + (0.04, 0.0), j["right_hip"] - (0.04, 0.0)
    shirt = [left_shoulder, right_shoulder, right_hip - (0, 0.03), left_hip - (0, 0.03)]
    shapes.append((np.array(shirt), style["shirt"]))
    pelvis = [
        left_hip - (0, 0.04),
        right_hip - (0, 0.04),
        right_hip + (0, 0.04),
        (0, 0.07),
        left_hip + (0, 0.04),
    ]
    shapes.append((np.array(pelvis), style["trousers"]))

    center, rot = extra["head_center"], extra["head_rot"]
    shapes.append((_capsule(extra["neck"], center, 0.024, 0.024), skin))
    for ear in (j["left_ear"], j["right_ear"]):
        shapes.append((_ellipse(ear, 0.012, 0.02, rot), skin))
    shapes.append((_ellipse(center, 0.05, 0.064, rot), skin))
    if facing == "front":
        hairline = style["hairline"]
        shapes.append(
            (_ellipse(center, 0.053, 0.068, rot, hairline, 540 - hairline), style["hair"])
        )
        dark = (30, 30, 40)
        for eye in (j["left_eye"], j["right_eye"]):
            shapes.append((_ellipse(eye, 0.01, 0.008, rot), dark))
        nose_colour = tuple(int(c * 0.75) for c in skin)
        shapes.append((_ellipse(j["nose"], 0.008, 0.012, rot), nose_colour))
        mouth = center + rot @ np.array([0.01 * extra["yaw"], 0.037])
        shapes.append((_ellipse(mouth, 0.014, 0.006, rot), (40, 40, 140)))
    else:  # back of the head: hair everywhere but the nape
        shapes.append((_ellipse(center, 0.053, 0.067, rot, 160, 380), style["hair"]))

    # Arms last: in front of the torso, from the front and from the back.
    for side, prefix in SIDES:
        shoulder, elbow, wrist = j[prefix + "shoulder"], j[prefix + "elbow"], j[prefix + "wrist"]
        if style["long_sleeves"]:
            shapes.append((_capsule(shoulder, elbow, 0.032, 0.026), style["shirt"]))
            shapes.append((_capsule(elbow, wrist, 0.026, 0.021), style["shirt"]))
        else:
            sleeve_end = shoulder + 0.45 * (elbow - shoulder)
            shapes.append((_capsule(shoulder, elbow, 0.03, 0.024), skin))
            shapes.append((_capsule(shoulder, sleeve_end, 0.034, 0.03), style["shirt"]))
            shapes.append((_capsule(elbow, wrist, 0.023, 0.019), skin))
        shapes.append((_ellipse(extra["hands"][side], 0.024, 0.024), skin))
    return shapes


def _place(points, height, origin, angle, facing):
    """Canonical -> image coordinates. A back-facing figure is mirrored, labels unchanged."""
    mirror = np.diag([1.0 if facing == "front" else -1.0, 1.0])
    return origin + height * points @ (_rotation(angle) @ mirror).T


def _box_overlap(a, b):
    """Area of the intersection of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _box_area(b):
    return (b[2] - b[0]) * (b[3] - b[1])


def sample_people(rng, width, height):
    """Figures (image-space joints and shapes) in depth order, back to front."""
    count = rng.choice(np.arange(1, MAX_PEOPLE + 1), p=[0.3, 0.3, 0.25, 0.15])
    # Person height as a fraction of image height in [0.35, 0.95], skewed towards large
    # people (the model sees 320x320 inputs with stride-4 features). Smaller people are
    # farther away, so they are drawn first and get occluded by nearer ones.
    fractions = np.sort(0.35 + 0.6 * rng.beta(2.0, 1.5, size=count))
    image_box = (0.0, 0.0, float(width), float(height))
    people = []
    for fraction in fractions:
        person_height = fraction * height
        facing = "front" if rng.random() < 0.6 else "back"
        joints, extra = _sample_pose(rng)
        shapes = _figure_shapes(joints, extra, _sample_style(rng), facing)
        angle = rng.uniform(-0.18, 0.18)
        # The figure's extent relative to its origin; positions only translate it.
        outline = _place(
            np.concatenate([poly for poly, _ in shapes]), person_height, 0.0, angle, facing
        )
        for _ in range(20):
            # The mid-hip sits about 0.48 body heights below the top of the head. Tops
            # slightly above the image and feet below it give truncated figures.
            top = rng.uniform(
                -0.06 * person_height, max(-0.06 * person_height, height - 0.8 * person_height)
            )
            origin = np.array([rng.uniform(0.05, 0.95) * width, top + 0.48 * person_height])
            box = (*(outline.min(axis=0) + origin), *(outline.max(axis=0) + origin))
            # Keep most of the figure in the image, and most of every earlier figure
            # uncovered, so that each annotated person is actually recognisable.
            if _box_overlap(box, image_box) < 0.6 * _box_area(box):
                continue
            if any(
                _box_overlap(box, other["box"]) > 0.4 * _box_area(other["box"]) for other in people
            ):
                continue
            place = functools.partial(
                _place, height=person_height, origin=origin, angle=angle, facing=facing
            )
            people.append(
                dict(
                    box=box,
                    facing=facing,
                    joints=place(joints),
                    shapes=[(place(polygon), colour) for polygon, colour in shapes],
                )
            )
            break
    return people


def _blend(first, second, weight):
    """``first`` and ``second`` (nested dicts and arrays of one pose) mixed by ``weight``."""
    if isinstance(first, dict):
        return {key: _blend(first[key], second[key], weight) for key in first}
    return (1 - weight) * np.asarray(first) + weight * np.asarray(second)


def sample_walkers(rng, width, height, num_people, num_frames):
    """Figures that walk across a ``width`` x ``height`` frame for ``num_frames`` frames,
    alternately left to right and right to left, so that they cross and hide each other, their
    limbs swinging between two random poses: per frame, a list of figures (``id``, and the
    image-space ``joints``, ``shapes``, ``facing`` and ``box`` of :func:`sample_people`), in
    depth order, back to front (nearer figures are larger and drawn later)."""
    fractions = np.sort(rng.uniform(0.5, 0.85, size=num_people))
    walkers = []
    for index, fraction in enumerate(fractions):
        direction = 1 if index % 2 == 0 else -1
        # Walkers of one direction start a lane apart, so that they cross the others rather
        # than walk behind each other all along.
        lane = 0.22 * (index // 2)
        start = rng.uniform(0.02, 0.08) + lane
        end = min(start + rng.uniform(0.6, 0.75), 0.98)
        if direction < 0:
            start, end = 1 - start, 1 - end
        walkers.append(
            dict(
                id=index,
                person_height=fraction * height,
                facing="front" if rng.random() < 0.6 else "back",
                poses=[_sample_pose(rng), _sample_pose(rng)],
                style=_sample_style(rng),
                angle=rng.uniform(-0.08, 0.08),
                path=(start * width, end * width),
                # Feet near the bottom for near (large) figures, higher up for far ones.
                top=rng.uniform(0.0, 1.0) * max(0.0, height - 0.95 * fraction * height),
                period=rng.uniform(16, 30),  # frames per stride
                phase=rng.uniform(0, 2 * np.pi),
            )
        )
    frames = []
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        people = []
        for walker in walkers:
            weight = 0.5 - 0.5 * np.cos(2 * np.pi * t / walker["period"] + walker["phase"])
            (joints_a, extra_a), (joints_b, extra_b) = walker["poses"]
            joints = _blend(joints_a, joints_b, weight)
            extra = _blend(extra_a, extra_b, weight)
            shapes = _figure_shapes(joints, extra, walker["style"], walker["facing"])
            x0, x1 = walker["path"]
            origin = np.array(
                [x0 + (x1 - x0) * progress, walker["top"] + 0.48 * walker["person_height"]]
            )
            place = functools.partial(
                _place,
                height=walker["person_height"],
                origin=origin,
                angle=walker["angle"],
                facing=walker["facing"],
            )
            outline = place(np.concatenate([polygon for polygon, _ in shapes]))
            people.append(
                dict(
                    id=walker["id"],
                    box=(*outline.min(axis=0), *outline.max(axis=0)),
                    facing=walker["facing"],
                    joints=place(joints),
                    shapes=[(place(polygon), colour) for polygon, colour in shapes],
                )
            )
        frames.append(people)
    return frames
