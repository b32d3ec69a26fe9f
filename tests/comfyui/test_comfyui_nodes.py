"""End-to-end tests of the StreamEdit nodes in a real ComfyUI server (see conftest.py), driven
over HTTP and the WebSocket as the web UI does, with the shipped workflows from workflows/."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_testdata import (CHECKPOINT, CLIP, CLIP_FRAMES, CLIP_SIZE, LONG_CLIP, ODD_CLIP,
                            torch_threads)
from streamedit_core.bench.comfyui import COMFYUI_ROOT, REPO, PromptRejected, ui_to_api

pytestmark = pytest.mark.comfyui

WORKFLOWS = REPO / "workflows"
SHIPPED_MODEL = REPO / "models" / "streamedit_demo.safetensors"
NODE_IDS = {
    "StreamEditModelLoader", "StreamEditTextEnsembleLoader", "StreamEditTextEncode",
    "StreamEditPromptSchedule", "StreamEditSTLEEncode", "StreamEditDiTSampler",
    "StreamEditSTLEDecode", "StreamEditResetStream", "StreamEditEditVideo",
    "StreamEditLoadVideoChunk", "StreamEditLiveSession",
}
PROMPT = "make it a watercolor painting"
# The stream tests use a prompt no other test encodes: TextEnsemble caches embeddings, and one
# encoded in a batch with other prompts may differ in the last float bits from one encoded alone.
STREAM_PROMPT = "make it a charcoal drawing"


# --- helpers ---------------------------------------------------------------------------------
def workflow(name: str, object_info: dict) -> dict:
    """A shipped UI workflow as the API prompt the UI would queue, pointed at the test files."""
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    prompt = ui_to_api(ui, object_info)
    for node in prompt.values():
        inputs = node["inputs"]
        if "ckpt_name" in inputs:
            inputs["ckpt_name"] = CHECKPOINT
        if node["class_type"] in ("LoadVideo", "StreamEditEditVideo", "StreamEditLoadVideoChunk"):
            inputs["file" if node["class_type"] == "LoadVideo" else "video"] = CLIP
    return prompt


def set_inputs(api: dict, class_type: str, **values) -> dict:
    nodes = [n for n in api.values() if n["class_type"] == class_type]
    assert nodes, f"no {class_type} in the prompt"
    for node in nodes:
        node["inputs"].update(values)
    return api


def node_outputs(comfy, prompt_id: str, class_type: str, prompt: dict) -> list[dict]:
    outputs = comfy.history(prompt_id)["outputs"]
    return [outputs[i] for i, n in prompt.items() if n["class_type"] == class_type and i in outputs]


def read_images(base: Path, results: list[dict]) -> np.ndarray:
    """[N, H, W, 3] uint8 of the images a PreviewImage/SaveImage node wrote."""
    files = [base / r["type"] / r["subfolder"] / r["filename"] for r in results]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]) if files else \
        np.zeros((0, CLIP_SIZE, CLIP_SIZE, 3), np.uint8)


def read_video(path: Path) -> torch.Tensor:
    from streamedit_core.io.video import VideoReader
    return torch.cat(list(VideoReader(path, chunk_frames=64)))


def run_ok(comfy, prompt: dict, timeout: float = 120):
    result = comfy.run(copy.deepcopy(prompt), timeout)
    assert result.status == "execution_success", result.error or result.events
    assert result.events[-1]["type"] == "executing" and result.events[-1]["data"]["node"] is None
    return result


def run_error(comfy, prompt: dict, *needles: str) -> str:
    result = comfy.run(copy.deepcopy(prompt), 120)
    assert result.status == "execution_error", result.events
    message = result.error["exception_message"]
    for needle in needles:
        assert needle in message, message
    return message


def assert_same_frames(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    np.testing.assert_array_equal(got, expected, err_msg=what)


def quantize(frames: torch.Tensor) -> np.ndarray:
    """As ComfyUI's image savers do: 255 * x clipped, truncated to uint8."""
    return np.clip(255.0 * frames.numpy(), 0, 255).astype(np.uint8)


def stream_prompt(object_info: dict, stream_id: str, chunk: int, chunk_frames: int, steps: int = 2,
                  video: str = CLIP) -> dict:
    prompt = workflow("stream_chunks", object_info)
    set_inputs(prompt, "PrimitiveInt", value=chunk)
    set_inputs(prompt, "StreamEditTextEncode", prompt=STREAM_PROMPT)
    set_inputs(prompt, "StreamEditLoadVideoChunk", chunk_frames=chunk_frames, video=video)
    for kind in ("StreamEditSTLEEncode", "StreamEditDiTSampler", "StreamEditSTLEDecode"):
        set_inputs(prompt, kind, stream_id=stream_id)
    return set_inputs(prompt, "StreamEditDiTSampler", steps=steps)


def reference_stream(base: Path, video: str, chunk_frames: int, chunks: int, steps: int = 2):
    """What the core StreamEditor gives for the same chunks, one result per chunk."""
    from streamedit_core.io.checkpoint import load_checkpoint
    from streamedit_core.stream.editor import StreamEditor
    from streamedit_core.model.text import TextEnsemble
    from streamedit_core.io.video import VideoReader

    # Loaded as ComfyUI does (nodes run under inference mode): CPU kernels can round in the
    # last bit differently when the weights require grad.
    with torch.inference_mode():
        model = load_checkpoint(base / "models" / "streamedit" / CHECKPOINT)
    editor = StreamEditor(model, TextEnsemble.minilm(max_tokens=16), STREAM_PROMPT, seed=0, steps=steps,
                          window_min=1, window_max=4)
    reader = VideoReader(base / "input" / video, chunk_frames=chunk_frames)
    with torch_threads():
        return [quantize(editor.feed(chunk)) for _, chunk in zip(range(chunks), reader)]


# --- schema ----------------------------------------------------------------------------------
def test_object_info_lists_every_node_with_types_defaults_tooltips(object_info):
    ours = {k: v for k, v in object_info.items() if k.startswith("StreamEdit")}
    assert set(ours) == NODE_IDS
    for node_id, info in ours.items():
        assert info["category"] == "StreamEdit" and info["description"], node_id
        assert info["display_name"].startswith("StreamEdit"), node_id
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                kind, opts = spec[0], spec[1] if len(spec) > 1 else {}
                assert isinstance(kind, str) and kind, (node_id, name)
                if kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    assert "default" in opts and opts.get("tooltip"), (node_id, name, opts)
                if kind == "COMBO":
                    assert opts.get("tooltip") and "options" in opts, (node_id, name, opts)
    sampler = ours["StreamEditDiTSampler"]["input"]
    assert sampler["required"]["steps"][1]["default"] == 6
    assert sampler["optional"]["chunk_index"][1]["control_after_generate"] is True
    # The loader lists ComfyUI's models/streamedit/ and the demo model shipped in this package.
    options = ours["StreamEditModelLoader"]["input"]["required"]["ckpt_name"][1]["options"]
    assert {CHECKPOINT, SHIPPED_MODEL.name} <= set(options)


# A script run by `run_with_package` starts by importing this repo as the package
# `comfyui_streamedit`, as ComfyUI does, without starting a server.
IMPORT_PACKAGE = textwrap.dedent("""
    import importlib.util, sys
    sys.path.insert(0, sys.argv[1])
    import comfy.options
    from comfy.cli_args import args
    args.cpu = True
    repo = sys.argv[2]
    spec = importlib.util.spec_from_file_location("comfyui_streamedit", repo + "/__init__.py",
                                                  submodule_search_locations=[repo])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_streamedit"] = pkg
    spec.loader.exec_module(pkg)
""")


def run_with_package(script: str) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter with ComfyUI on the path and our package imported."""
    return subprocess.run([sys.executable, "-c", IMPORT_PACKAGE + script, str(COMFYUI_ROOT), str(REPO)],
                          capture_output=True, text=True, timeout=180)


SCHEMA_CHECK = textwrap.dedent("""
    import inspect, json
    from comfyui_streamedit.nodes import NODES, register_folders
    register_folders()
    problems = []
    for cls in NODES:
        schema = cls.define_schema()
        params = inspect.signature(cls.execute).parameters
        names = [i.id for i in schema.inputs]
        if list(params) != names:
            problems.append(f"{schema.node_id}: execute{list(params)} != schema {names}")
        for i in schema.inputs:
            p = params.get(i.id)
            if p is not None and i.optional != (p.default is not inspect.Parameter.empty):
                problems.append(f"{schema.node_id}.{i.id}: optional={i.optional} but default {p.default}")
            if p is not None and i.optional and getattr(i, "default", None) is not None \\
                    and p.default != i.default:
                problems.append(f"{schema.node_id}.{i.id}: schema default {i.default} != {p.default}")
    print(json.dumps(problems))
""")


def test_comfyui_starts_without_tracebacks(comfy_server):
    """Our set-up gives ComfyUI what its own nodes import (torchaudio for the audio nodes): its
    start-up log, up to the first job, holds no traceback and no node that failed to import."""
    start = comfy_server.log().split("got prompt")[0]
    assert "StreamEdit" in start or "comfyui-streamedit" in start
    assert "Traceback" not in start and "Cannot import" not in start, start[-3000:]


def test_every_execute_matches_its_schema():
    """Each node's execute() takes exactly its schema's inputs, in order; optional inputs (what an
    older saved workflow may lack) have the same default in both."""
    out = run_with_package(SCHEMA_CHECK)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_workflows_use_only_known_nodes(object_info):
    files = sorted(WORKFLOWS.glob("*.json"))
    assert {f.stem for f in files} >= {"edit_video_file", "stream_chunks", "prompt_schedule"}
    for f in files:
        ui = json.loads(f.read_text())
        assert ui.get("version") == 0.4 and ui["nodes"] and "links" in ui, f.name
        unknown = {n["type"] for n in ui["nodes"]} - set(object_info)
        assert not unknown, (f.name, unknown)
        assert f.with_suffix(".png").is_file(), f"{f.name} has no preview image"


# --- shipped workflows -----------------------------------------------------------------------
def test_edit_video_file_workflow(comfy, comfy_base, object_info):
    prompt = workflow("edit_video_file", object_info)
    edit = next(i for i, n in prompt.items() if n["class_type"] == "StreamEditEditVideo")
    prompt["99"] = {"class_type": "PreviewAny", "inputs": {"source": [edit, 1]}}  # its read_as output
    result = run_ok(comfy, prompt)
    assert any(e["type"] == "progress" for e in result.events)
    (shown,) = node_outputs(comfy, result.prompt_id, "PreviewAny", prompt)
    assert shown["text"] == ["this model reads prompts as they are (it has no closed vocabulary)"]
    (ui,) = node_outputs(comfy, result.prompt_id, "StreamEditEditVideo", prompt)
    saved = ui["images"][0]
    frames = read_video(comfy_base / "output" / saved["subfolder"] / saved["filename"])
    assert frames.shape == (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
    assert torch.isfinite(frames).all() and frames.std() > 0


def test_every_shipped_workflow_runs_as_shipped(comfy, comfy_base, object_info):
    """As a user gets them: the shipped demo model, each workflow's own prompt, and the example
    clip they name, which the nodes put into ComfyUI's input folder when ComfyUI starts."""
    assert (comfy_base / "input" / "streamedit_example.mp4").is_file()
    for name in ("edit_video_file", "stream_chunks", "prompt_schedule"):
        prompt = ui_to_api(json.loads((WORKFLOWS / f"{name}.json").read_text()), object_info)
        result = run_ok(comfy, prompt, timeout=600)
        if name != "stream_chunks":  # a stream's first job only fills the buffer
            (ui,) = node_outputs(comfy, result.prompt_id, "SaveVideo" if name == "prompt_schedule"
                                 else "StreamEditEditVideo", prompt)
            saved = ui["images"][0]
            frames = read_video(comfy_base / "output" / saved["subfolder"] / saved["filename"])
            assert frames.shape == (64, 144, 176, 3), name


def test_strict_refuses_a_prompt_the_model_does_not_know(comfy, object_info):
    prompt = ui_to_api(json.loads((WORKFLOWS / "edit_video_file.json").read_text()), object_info)
    set_inputs(prompt, "StreamEditTextEncode", prompt="make it a watercolor painting")
    set_inputs(prompt, "StreamEditEditVideo", strict=True)
    run_error(comfy, prompt, "'make it a watercolor painting' is not an edit this model knows",
              "the nearest, grayscale", "strict is on")


def test_prompt_schedule_workflow_with_comfy_video_nodes(comfy, comfy_base, object_info):
    prompt = workflow("prompt_schedule", object_info)
    set_inputs(prompt, "StreamEditPromptSchedule", transition_frames=4,
               schedule=f"0: {PROMPT}\n12: make it a pencil sketch")
    result = run_ok(comfy, prompt)
    (ui,) = node_outputs(comfy, result.prompt_id, "SaveVideo", prompt)
    saved = ui["images"][0]
    frames = read_video(comfy_base / "output" / saved["subfolder"] / saved["filename"])
    assert frames.shape == (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
    assert torch.isfinite(frames).all()


def test_stream_chunks_equal_core_stream_editor(comfy, comfy_base, object_info):
    """Three queued chunk jobs on one stream_id give the frames of StreamEditor.feed."""
    expected = reference_stream(comfy_base, CLIP, chunk_frames=8, chunks=3)
    stream_id = f"s-{uuid.uuid4().hex[:6]}"
    got = []
    for k in range(3):
        prompt = stream_prompt(object_info, stream_id, k, chunk_frames=8)
        result = run_ok(comfy, prompt)
        got.append(read_images(comfy_base, node_outputs(comfy, result.prompt_id, "PreviewImage",
                                                         prompt)[0]["images"]))
    assert [g.shape[0] for g in got] == [e.shape[0] for e in expected] == [4, 8, 8]
    for k, (g, e) in enumerate(zip(got, expected)):
        assert_same_frames(g, e, f"chunk {k}")


def test_jobs_filling_the_buffer_succeed_without_frames(comfy, comfy_base, object_info):
    """4 steps, one latent frame per job: the first 3 jobs only fill the buffer. Preview Image
    is skipped for them (an empty batch would fail it); the 4th job's frames equal the core's."""
    expected = reference_stream(comfy_base, CLIP, chunk_frames=4, chunks=4, steps=4)
    assert [e.shape[0] for e in expected] == [0, 0, 0, 4]
    stream_id = f"f-{uuid.uuid4().hex[:6]}"
    for k in range(4):
        prompt = stream_prompt(object_info, stream_id, k, chunk_frames=4, steps=4)
        result = run_ok(comfy, prompt)
        previews = node_outputs(comfy, result.prompt_id, "PreviewImage", prompt)
        if k < 3:
            assert previews == [], f"chunk {k}"
        else:
            assert_same_frames(read_images(comfy_base, previews[0]["images"]), expected[k], "chunk 3")


def test_interrupt_mid_chunk_then_requeue_continues_exactly(comfy, comfy_base, object_info):
    chunk_frames = 48  # 12 latent frames per chunk: long enough to interrupt mid-job
    expected = reference_stream(comfy_base, LONG_CLIP, chunk_frames, chunks=3)
    stream_id = f"i-{uuid.uuid4().hex[:6]}"
    prompts = [stream_prompt(object_info, stream_id, k, chunk_frames, video=LONG_CLIP) for k in range(3)]
    first = run_ok(comfy, prompts[0])

    def interrupt_on_progress(event):
        if event["type"] == "progress" and event["data"]["value"] == 1:
            comfy.interrupt()

    interrupted = comfy.wait(comfy.queue(copy.deepcopy(prompts[1])), 120, on_event=interrupt_on_progress)
    assert interrupted.status == "execution_interrupted", [e["type"] for e in interrupted.events]
    got = [first] + [run_ok(comfy, p) for p in prompts[1:]]
    for k, (result, e) in enumerate(zip(got, expected)):
        g = read_images(comfy_base, node_outputs(comfy, result.prompt_id, "PreviewImage",
                                                 prompts[k])[0]["images"])
        assert_same_frames(g, e, f"chunk {k}")


def test_clear_history_does_not_roll_back_a_finished_chunk(comfy, comfy_base, object_info):
    """A chunk commits when ComfyUI reports its job done; "Clear History" afterwards must not undo
    it (it did while success was read from the history at the next job: chunk 0 was rolled back
    and chunk 1 failed with 'stream ... does not exist')."""
    expected = reference_stream(comfy_base, CLIP, chunk_frames=8, chunks=2)
    stream_id = f"h-{uuid.uuid4().hex[:6]}"
    run_ok(comfy, stream_prompt(object_info, stream_id, 0, chunk_frames=8))
    comfy.request("POST", "/history", {"clear": True})
    prompt = stream_prompt(object_info, stream_id, 1, chunk_frames=8)
    result = run_ok(comfy, prompt)
    got = read_images(comfy_base, node_outputs(comfy, result.prompt_id, "PreviewImage", prompt)[0]["images"])
    assert_same_frames(got, expected[1], "chunk 1 after clearing the history")


# --- stream bookkeeping ----------------------------------------------------------------------
def test_chunk_gap_repeat_reset_and_free(comfy, object_info):
    stream_id = f"g-{uuid.uuid4().hex[:6]}"
    chunk = lambda k: stream_prompt(object_info, stream_id, k, chunk_frames=8)  # noqa: E731
    run_error(comfy, chunk(1), repr(stream_id), "has no state", "chunk_index 0")
    run_ok(comfy, chunk(0))
    run_error(comfy, chunk(2), "chunk_index 2 skips chunks", "next chunk is 1")
    run_error(comfy, set_inputs(chunk(1), "StreamEditDiTSampler", seed=7), "was started with",
              "'seed': 0", "'seed': 7")
    run_ok(comfy, chunk(1))
    run_error(comfy, chunk(1), "chunk_index 1 repeats", "next chunk is 2")
    reset = {"1": {"class_type": "StreamEditResetStream", "inputs": {"stream_id": stream_id}}}
    result = run_ok(comfy, reset)
    assert "reset" in node_outputs(comfy, result.prompt_id, "StreamEditResetStream", reset)[0]["text"][0]
    run_error(comfy, chunk(2), "has no state")
    run_ok(comfy, chunk(0))
    comfy.free()
    run_error(comfy, chunk(1), "has no state", "/free")
    run_ok(comfy, chunk(0))  # the model reloads after /free unloaded it


def test_free_drops_streams_and_closes_decoders_on_the_worker(comfy, object_info):
    """Issue 49, defects 3 and 9: /free drops the streams and closes Load Video Chunk's open
    decoders, released on the worker thread at the end of the next job; GET /streamedit/streams
    says what is held and the bounds."""
    stream_id = f"d-{uuid.uuid4().hex[:6]}"
    run_ok(comfy, stream_prompt(object_info, stream_id, 0, chunk_frames=8))
    held = comfy.request("GET", "/streamedit/streams")
    assert held["streams"] >= 1 and held["open_decoders"] >= 1 and held["max_streams"] == 16
    assert held["idle_seconds"] == 3600 and held["in_jobs"] == 0
    comfy.free()
    run_ok(comfy, {"1": {"class_type": "StreamEditResetStream", "inputs": {"stream_id": "none"}}})
    held = comfy.request("GET", "/streamedit/streams")
    assert held["streams"] == 0 and held["open_decoders"] == 0, held


def test_a_stream_whose_model_was_replaced_is_dropped(comfy, object_info):
    """Issue 49, defect 3: the stream held its model's patcher, keeping a model ComfyUI had
    dropped alive for as long as the stream lived. Now the patcher is held weakly: when the
    loader's output changes (another checkpoint), the stream is dropped and says why."""
    stream_id = f"m-{uuid.uuid4().hex[:6]}"
    run_ok(comfy, stream_prompt(object_info, stream_id, 0, chunk_frames=8))
    other = set_inputs(stream_prompt(object_info, f"o-{uuid.uuid4().hex[:6]}", 0, chunk_frames=8),
                       "StreamEditModelLoader", ckpt_name=SHIPPED_MODEL.name)
    run_ok(comfy, other)
    run_error(comfy, stream_prompt(object_info, stream_id, 1, chunk_frames=8), repr(stream_id),
              "its model was unloaded")


def test_edit_video_at_a_working_size(comfy, comfy_base, object_info):
    """Issue 49, defect 8: the Edit Video node's size edits at a smaller size and writes the
    video's own size."""
    prompt = set_inputs(workflow("edit_video_file", object_info), "StreamEditEditVideo", size=16,
                        steps=2)
    result = run_ok(comfy, prompt)
    (ui,) = node_outputs(comfy, result.prompt_id, "StreamEditEditVideo", prompt)
    saved = ui["images"][0]
    frames = read_video(comfy_base / "output" / saved["subfolder"] / saved["filename"])
    assert frames.shape == (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
    assert sum(e["type"] == "progress" for e in result.events) >= CLIP_FRAMES // 4 + 1  # the flush counted


def test_load_video_chunk_in_any_order_equals_the_file(comfy, comfy_base):
    """In order (the open decoder is reused), repeated, backwards and past the end."""
    frames = quantize(read_video(comfy_base / "input" / LONG_CLIP))  # 144 frames

    def chunk(k: int) -> dict:
        return {"1": {"class_type": "StreamEditLoadVideoChunk",
                      "inputs": {"video": LONG_CLIP, "chunk_index": k, "chunk_frames": 16}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}

    for k in (0, 1, 2, 2, 0, 5, 8):
        result = run_ok(comfy, chunk(k))
        got = read_images(comfy_base, node_outputs(comfy, result.prompt_id, "PreviewImage", chunk(k))[0]["images"])
        assert_same_frames(got, frames[16 * k:16 * (k + 1)], f"chunk {k}")
    run_error(comfy, chunk(9), f"video '{LONG_CLIP}' has no chunk 9: it holds 9 chunks of up to 16 frames")


# --- bad input: a clear execution_error, and the server takes the next job ---------------------
def test_bad_inputs_report_clear_errors_and_server_recovers(comfy, comfy_base, object_info):
    good = workflow("edit_video_file", object_info)

    bad = set_inputs(copy.deepcopy(good), "StreamEditModelLoader", ckpt_name="nope.safetensors")
    run_error(comfy, bad, "unknown checkpoint 'nope.safetensors'", CHECKPOINT)

    bad = set_inputs(copy.deepcopy(good), "StreamEditTextEncode", prompt="  ")
    run_error(comfy, bad, "prompt is empty")

    bad = set_inputs(copy.deepcopy(good), "StreamEditEditVideo", video="../../etc/passwd")
    run_error(comfy, bad, "'../../etc/passwd'", "outside ComfyUI's folder")

    bad = set_inputs(copy.deepcopy(good), "StreamEditEditVideo", filename_prefix="../../evil")
    run_error(comfy, bad, "'../../evil'", "outside ComfyUI's output folder")

    bad = set_inputs(copy.deepcopy(good), "StreamEditEditVideo", video=ODD_CLIP)
    run_error(comfy, bad, "36 x 36 is not supported", "32 x 32")

    bad = set_inputs(workflow("prompt_schedule", object_info), "StreamEditDiTSampler",
                     window_min=3, window_max=2)
    run_error(comfy, bad, "window_min=3", "window_max=2")

    bad = set_inputs(workflow("prompt_schedule", object_info), "StreamEditPromptSchedule",
                     schedule="5: starts late")
    run_error(comfy, bad, "must start at frame 0")

    # A LATENT of an image model into the DiT sampler.
    mismatched = workflow("prompt_schedule", object_info)
    mismatched["99"] = {"class_type": "EmptyLatentImage",
                        "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    set_inputs(mismatched, "StreamEditDiTSampler", source=["99", 0])
    run_error(comfy, mismatched, "[1, 4, 8, 8]", "does not fit the StreamEdit model")

    with pytest.raises(PromptRejected) as rejected:  # caught by the schema before running
        comfy.queue(set_inputs(copy.deepcopy(good), "StreamEditEditVideo", steps=0))
    assert "steps" in json.dumps(rejected.value.body)

    # A prompt from an older version of the nodes: optional inputs missing get their defaults.
    old = copy.deepcopy(good)
    for node in old.values():
        if node["class_type"].startswith("StreamEdit"):
            for name in ("window_min", "window_max", "filename_prefix", "preset", "dtype", "attention"):
                node["inputs"].pop(name, None)
    run_ok(comfy, old)


def test_ui_converter_fills_defaults_for_older_workflows(object_info):
    """A UI workflow saved before the optional inputs existed (shorter widgets_values) converts
    with the schema's defaults, as the web UI does when it loads it."""
    ui = json.loads((WORKFLOWS / "edit_video_file.json").read_text())
    node = next(n for n in ui["nodes"] if n["type"] == "StreamEditEditVideo")
    node["widgets_values"] = node["widgets_values"][:4]  # video, seed, its control, steps
    prompt = ui_to_api(ui, object_info)
    inputs = prompt[str(node["id"])]["inputs"]
    assert inputs["steps"] == 6 and inputs["window_min"] == 1 and inputs["window_max"] == 4
    assert inputs["filename_prefix"] == "streamedit/edit"
    assert isinstance(inputs["model"], list) and isinstance(inputs["text"], list)
    assert not math.isnan(inputs["seed"])
