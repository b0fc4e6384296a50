"""Reading images and labels by any file name, and showing any file name.

``cv2.imread`` takes its path as UTF-8 text: a name that is not valid UTF-8 (Python hands it
over with surrogate escapes, e.g. ``bad\\udcff.jpg``) crashes the process. Every image this
package reads goes through :func:`read_image` instead, which reads the bytes with numpy (any name
the file system holds) and decodes them with ``cv2.imdecode``; every label through
:func:`read_label`, which opens the file in Python and decodes it with PIL, as PaddleSeg does.
"""
import os

from .errors import UserError


def shown(path):
    """``path`` as text that prints anywhere: bytes that are not UTF-8 (surrogate escapes in a
    str, or raw bytes) become ``\\xNN``."""
    if isinstance(path, bytes):
        return path.decode("utf-8", "backslashreplace")
    text = str(path)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def read_label(path, what="label"):
    """The array PaddleSeg reads from label ``path`` (PIL, as its Compose does): a palette
    ("pseudo-colour") PNG gives its palette indices, which OpenCV would expand to colours; a
    grayscale one its values. UserError naming the file when it cannot be read or decoded."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    path = os.fsdecode(path)
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            return np.array(img)
    except UnidentifiedImageError:
        raise UserError(f"cannot read {what} {shown(path)}: not an image file PIL can decode")\
            from None
    except (OSError, SyntaxError, ValueError) as e:   # PIL's damaged-file errors included
        raise UserError(f"cannot read {what} {shown(path)}: {getattr(e, 'strerror', None) or e}")\
            from None


def read_image(path, flags=None, what="image"):
    """The decoded image at ``path`` (``cv2.imdecode`` ``flags``, default ``IMREAD_COLOR``:
    BGR like ``cv2.imread``); UserError naming the file when it cannot be read or is not an
    image OpenCV decodes."""
    import cv2
    import numpy as np
    flags = cv2.IMREAD_COLOR if flags is None else flags
    path = os.fsdecode(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"cannot read {what} {shown(path)}: {e.strerror or e}") from None
    img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None:
        raise UserError(f"cannot read {what} {shown(path)}: not an image file OpenCV can decode")
    return img


def write_image(path, image):
    """Write ``image`` (as ``cv2.imwrite`` encodes it, by the path's extension) to ``path``, any
    file name, atomically; UserError when it cannot be encoded."""
    import cv2
    from .fileio import atomic_path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".png", image)
    if not ok:
        raise UserError(f"cannot encode {shown(path)}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(encoded.tobytes())
