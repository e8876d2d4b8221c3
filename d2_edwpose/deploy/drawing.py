"""Poses drawn with OpenCV: each person's box and track id in a colour of their own, the
skeleton of the export's keypoint set (its names and connection rules), and a status line."""

import cv2
import numpy as np

__all__ = ["KEYPOINT_SCORE_THRESHOLD", "draw_poses", "skeleton_edges"]

# detectron2's Visualizer draws keypoints whose score (a probability) exceeds this.
KEYPOINT_SCORE_THRESHOLD = 0.05
_UNTRACKED = (200, 200, 200)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def skeleton_edges(keypoint_names, connection_rules):
    """[(index_a, index_b, BGR colour)] of detectron2's ``keypoint_connection_rules``
    ((name_a, name_b, (r, g, b)), ...) for keypoints ``keypoint_names``. Rules naming
    keypoints not in the set are a ValueError (the export checks them too)."""
    if not keypoint_names or not connection_rules:
        return []
    index = {name: i for i, name in enumerate(keypoint_names)}
    edges = []
    for first, second, colour in connection_rules:
        if first not in index or second not in index:
            raise ValueError(
                f"connection rule ({first!r}, {second!r}) names keypoints outside "
                f"{list(keypoint_names)}"
            )
        red, green, blue = (int(c) for c in colour)
        edges.append((index[first], index[second], (blue, green, red)))
    return edges


def _track_colour(track_id):
    """A bright colour per track id, the same in every frame."""
    if track_id < 0:
        return _UNTRACKED
    hue = (track_id * 47) % 180  # OpenCV's hue range; 47 spreads consecutive ids apart
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(c) for c in bgr)


def draw_poses(image, poses, edges=(), status=None):
    """A copy of the BGR ``image`` with ``poses`` (the runner's dict, ``track_ids``
    optional) drawn: boxes and labels in each track's colour, keypoints scored above
    ``KEYPOINT_SCORE_THRESHOLD`` joined by ``edges`` (:func:`skeleton_edges`; none: the
    keypoints alone), and ``status`` (a line of text, e.g. the FPS) in the top-left corner."""
    drawn = image.copy()
    height = image.shape[0]
    thickness = max(1, round(height / 360))
    radius = thickness + 1
    track_ids = poses.get("track_ids")
    for i, (box, score, keypoints) in enumerate(
        zip(poses["boxes"], poses["scores"], poses["keypoints"])
    ):
        track_id = -1 if track_ids is None else int(track_ids[i])
        colour = _track_colour(track_id)
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(drawn, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
        visible = keypoints[:, 2] > KEYPOINT_SCORE_THRESHOLD
        points = np.round(keypoints[:, :2]).astype(int)
        for a, b, edge_colour in edges:
            if visible[a] and visible[b]:
                cv2.line(
                    drawn, tuple(points[a]), tuple(points[b]), edge_colour, thickness, cv2.LINE_AA
                )
        for (x, y), shown in zip(points, visible):
            if shown:
                cv2.circle(drawn, (int(x), int(y)), radius, colour, -1, cv2.LINE_AA)
        label = f"{score:.2f}" if track_id < 0 else f"id {track_id}  {score:.2f}"
        _label(drawn, label, (x0, max(y0 - 4, 12)), colour, height)
    if status:
        _label(drawn, status, (6, 6 + round(height / 36)), (255, 255, 255), height)
    return drawn


def _label(image, text, origin, colour, height):
    """``text`` at ``origin`` (its baseline's left end) on a dark band, readable anywhere."""
    scale = max(0.4, height / 900)
    (width, text_height), baseline = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = origin
    cv2.rectangle(image, (x, y - text_height - 2), (x + width + 2, y + baseline), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 1, y), _FONT, scale, colour, 1, cv2.LINE_AA)
