"""Drive a real ComfyUI server the way its web UI does: HTTP + WebSocket, and UI -> API workflows.

The client side of ComfyUI that the demo (`bench.demo`), the ComfyUI benchmark
(`bench.comfyui_bench`), the workflow previews (`scripts/render_previews.py`) and the ComfyUI
tests (`tests/comfyui/`) share. It starts ComfyUI as a process and talks to it over HTTP; it
never imports ComfyUI, and `websocket` (websocket-client) is imported only when a client is made.

`ComfyServer` starts `main.py` from the cache folder (`make comfyui`) in a subprocess on a free
loopback port, with a throw-away base directory whose `custom_nodes/comfyui-streamedit` links
to this repo, and only our package loaded. `ComfyClient` queues prompts and collects the
WebSocket events of a job. `ui_to_api` turns a saved UI workflow into the API prompt that the
web UI's "Queue" sends, using `/object_info` for the widget order.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The checkout this module sits in (streamedit_core/bench/comfyui.py): what ComfyUI loads as our
# custom node, and where `make comfyui` puts ComfyUI.
REPO = Path(__file__).resolve().parents[2]
COMFYUI_ROOT = REPO / ".cache" / "comfyui" / "ComfyUI"
PACKAGE_LINK = "comfyui-streamedit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One ComfyUI process; `base` holds custom_nodes/, models/, input/, output/, user/."""

    def __init__(self, base: Path, comfy_root: Path = COMFYUI_ROOT, python: str = sys.executable,
                 threads: int | None = None, gpu: bool = False):
        if not (comfy_root / "main.py").is_file():
            raise FileNotFoundError(f"no ComfyUI at {comfy_root}: run `make comfyui` first")
        self.base, self.comfy_root, self.python = Path(base), comfy_root, python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.threads = threads  # torch CPU threads in the server (None: torch's default)
        self.gpu = gpu  # False: --cpu, as in the tests and the demo; True: ComfyUI picks the GPU
        self.extra_nodes: list[str] = []  # more custom_nodes/ folders to load besides ours

    def prepare(self) -> None:
        nodes = self.base / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        link = nodes / PACKAGE_LINK
        if link.is_symlink() and link.resolve() != REPO.resolve():  # left by a checkout moved or gone
            link.unlink()
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        for sub in ("input", "output", "temp", "models/streamedit", "models/text_encoders"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        settings = self.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        if not settings.exists():  # else the web UI opens with its Templates dialog
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))

    def start(self, timeout: float = 120.0) -> None:
        self.prepare()
        cmd = [self.python, "main.py", *([] if self.gpu else ["--cpu"]), "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACKAGE_LINK, *self.extra_nodes,
               "--disable-api-nodes", "--disable-auto-launch"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_root, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=2).read()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class PromptRejected(Exception):
    """POST /prompt answered 400: the prompt failed validation. `.body` has `node_errors`."""

    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body


@dataclass
class JobResult:
    prompt_id: str
    events: list[dict] = field(default_factory=list)  # WebSocket JSON messages for this job

    def of(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.events if e["type"] == kind]

    @property
    def status(self) -> str:
        for kind in ("execution_error", "execution_interrupted", "execution_success"):
            if self.of(kind):
                return kind
        return "unknown"

    @property
    def error(self) -> dict | None:
        errors = self.of("execution_error")
        return errors[0] if errors else None


class ComfyClient:
    """HTTP + WebSocket client of one server, with one client id like a browser tab."""

    def __init__(self, url: str):
        import websocket  # websocket-client: only where a client is made

        self.url = url
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}", timeout=5)

    def close(self) -> None:
        self.ws.close()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else None

    def object_info(self, node: str | None = None) -> dict:
        return self.request("GET", "/object_info" + (f"/{node}" if node else ""))

    def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            return self.request("POST", "/prompt", body)["prompt_id"]
        except urllib.error.HTTPError as e:
            if e.code == 400:
                raise PromptRejected(json.loads(e.read())) from None
            raise

    def wait(self, prompt_id: str, timeout: float = 300, on_event=None) -> JobResult:
        """Collect this job's events until `executing` with node null (the UI's "done")."""
        import websocket

        result = JobResult(prompt_id)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {prompt_id} not done after {timeout} s: events "
                                   f"{[e['type'] for e in result.events]}; {self._queue_state(prompt_id)}")
            self.ws.settimeout(min(remaining, 5))
            try:
                msg = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if isinstance(msg, bytes):  # binary preview images
                continue
            event = json.loads(msg)
            data = event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            result.events.append(event)
            if on_event is not None:
                on_event(event)
            if event["type"] == "executing" and data.get("node") is None:
                return result
            if event["type"] in ("execution_error", "execution_interrupted"):
                return result

    def _queue_state(self, prompt_id: str) -> str:
        """Where the server's queue has the job (for timeout messages)."""
        try:
            queue = self.request("GET", "/queue", timeout=5)
        except (urllib.error.URLError, OSError) as e:
            return f"GET /queue failed: {e}"
        where = {kind: [item[1] for item in queue.get(kind, [])] for kind in ("queue_running", "queue_pending")}
        state = next((k for k, ids in where.items() if prompt_id in ids), "in neither queue")
        return f"the job is {state}; running {where['queue_running']}, pending {len(where['queue_pending'])}"

    def run(self, prompt: dict, timeout: float = 300) -> JobResult:
        return self.wait(self.queue(prompt), timeout)

    def history(self, prompt_id: str) -> dict:
        return self.request("GET", f"/history/{prompt_id}").get(prompt_id, {})

    def interrupt(self) -> None:
        self.request("POST", "/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})


# --- UI format -> API format -----------------------------------------------------------------
# What the web UI's graphToPrompt does, for the node kinds our workflows use: every widget
# input takes the next entry of `widgets_values` in /object_info input order (an INT/COMBO with
# `control_after_generate` is followed by its "fixed/increment/randomize" entry, which is not
# an input; upload buttons append theirs at the end); linked inputs become [node_id, slot].
# Values missing at the end (a workflow saved by an older version of the node) get the
# schema's default, as the UI does when it loads such a workflow.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED_MODES = {2, 4}  # never / bypass
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widget_inputs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of each widget input of a node, in the order the UI builds them."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
            kind = "COMBO" if isinstance(kind, list) else kind
            if kind in _WIDGET_TYPES and not opts.get("forceInput"):
                out.append((name, kind, opts))
    return out


def _has_control_widget(name: str, kind: str, opts: dict) -> bool:
    if kind not in ("INT", "COMBO"):
        return False
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return kind == "INT" and name in ("seed", "noise_seed")


def _default(kind: str, opts: dict, spec_kind: Any) -> Any:
    if "default" in opts:
        return opts["default"]
    if kind == "COMBO":
        options = spec_kind if isinstance(spec_kind, list) else opts.get("options", [])
        return options[0] if options else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in VIRTUAL_NODES or node.get("mode", 0) in MUTED_MODES:
            continue
        if kind not in object_info:
            raise ValueError(f"workflow node {node['id']} has type {kind!r}, which this "
                             f"ComfyUI does not know")
        info = object_info[kind]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):  # some nodes save a name -> value map
            values = []
            inputs.update(node["widgets_values"])
        i = 0
        specs = {**(info["input"].get("required") or {}), **(info["input"].get("optional") or {})}
        for name, wkind, opts in _widget_inputs(info):
            if name in inputs:
                continue
            if i < len(values):
                inputs[name] = values[i]
                i += 1
                if _has_control_widget(name, wkind, opts):
                    i += 1
            else:
                inputs[name] = _default(wkind, opts, specs[name][0])
        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            _, origin, origin_slot, _, _, _ = links[link_id]
            inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title", kind)}}
    return prompt
