"""StreamEdit Edit Video: a video file in ComfyUI's input folder -> an edited file in its output
folder, chunk by chunk (memory bounded by the window, not by the video's length)."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.input_impl import VideoFromFile
from comfy_api.latest import io, ui

from ..streamedit_core.io.video import ChunkReader, VideoReader
from ..streamedit_core.stream.edit import edit_video, parse_size
from .common import (CATEGORY, CHUNK_INDEX_TOOLTIP, READ_AS_TOOLTIP, STRICT_TOOLTIP, EditText, LoadedModel,
                     ModelType, TextType, progress_bar, read_as, resolve_inside, show_warning)

# Files that Load Video Chunk reads, left open between jobs (closed on /free).
CHUNK_READER = ChunkReader()


def _input_videos() -> list[str]:
    folder = folder_paths.get_input_directory()
    files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["video"]))


def output_path(prefix: str, width: int, height: int) -> tuple[str, str, str]:
    """(path, filename, subfolder) of a new .mp4 for `prefix`, refused outside the output folder."""
    root = os.path.realpath(folder_paths.get_output_directory())
    target = os.path.realpath(os.path.join(root, prefix))
    if not prefix.strip() or os.path.commonpath([root, target]) != root:
        raise ValueError(f"filename_prefix {prefix!r} points outside ComfyUI's output folder {root}")
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, root, width, height)
    filename = f"{name}_{counter:05}_.mp4"
    return os.path.join(folder, filename), filename, subfolder


class EditVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditEditVideo",
            display_name="StreamEdit Edit Video",
            category=CATEGORY,
            description="Edits a whole video file with the prompt (or prompt schedule), streaming it "
                        "chunk by chunk; writes an .mp4 to the output folder.",
            inputs=[
                ModelType.Input("model"),
                TextType.Input("text"),
                io.Combo.Input("video", options=_input_videos(), upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Noise seed; latent frame i uses noise seeded by (seed, i)."),
                io.Int.Input("steps", default=6, min=1, max=64,
                             tooltip="Denoising levels; 6 for the distilled model."),
                io.Int.Input("window_min", default=1, min=0, max=16, optional=True,
                             tooltip="Clean history latent frames kept at least."),
                io.Int.Input("window_max", default=4, min=0, max=16, optional=True,
                             tooltip="History latent frames kept at most on static content."),
                io.String.Input("filename_prefix", default="streamedit/edit", optional=True,
                                tooltip="Output file prefix, inside the output folder."),
                io.Int.Input("size", default=0, min=0, max=8192, step=8, optional=True,
                             tooltip="Working size: 0 edits at the video's own size; otherwise the "
                                     "longer side in pixels to edit at (aspect kept), the result "
                                     "scaled back to the video's size. Quicker and lighter on large "
                                     "videos; needed past 1920 x 1080."),
                io.Boolean.Input("strict", default=False, optional=True, tooltip=STRICT_TOOLTIP),
            ],
            outputs=[io.Video.Output(display_name="video"),
                     io.String.Output(display_name="read_as", tooltip=READ_AS_TOOLTIP)],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, video: str) -> bool:
        # Taking `video` here turns off ComfyUI's "Value not in list" check so that a bad name
        # (missing file, `../` path) reaches execute and fails with our message.
        return True

    @classmethod
    def fingerprint_inputs(cls, video: str, **kwargs) -> float | str:
        path = os.path.join(folder_paths.get_input_directory(), video)
        return os.path.getmtime(path) if os.path.isfile(path) else video

    @classmethod
    def execute(cls, model: LoadedModel, text: EditText, video: str, seed: int, steps: int,
                window_min: int = 1, window_max: int = 4,
                filename_prefix: str = "streamedit/edit", size: int = 0, strict: bool = False) -> io.NodeOutput:
        source = resolve_inside(folder_paths.get_input_directory(), video, "video")
        m = model.get()
        reader = VideoReader(source)  # the header: the output's size (edit_video checks the sizes)
        path, filename, subfolder = output_path(filename_prefix, reader.width, reader.height)
        reading = read_as(m, text.encoder, text.schedule.prompts, strict)  # before the edit: the console says what the model will do
        edit_video(m, text.encoder, source, path, text.schedule, seed=seed, steps=steps,
                   window_min=window_min, window_max=window_max, attention=model.attention,
                   progress=progress_bar(), size=parse_size(size),
                   on_warning=show_warning)  # slow size, truncated file: on the node too
        return io.NodeOutput(VideoFromFile(path), reading, ui=ui.PreviewVideo(
            [ui.SavedResult(filename, subfolder, io.FolderType.output)]))


class LoadVideoChunk(io.ComfyNode):
    """Frames [k * n, (k + 1) * n) of a video file: a stand-in for a live source when streaming."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StreamEditLoadVideoChunk",
            display_name="StreamEdit Load Video Chunk",
            category=CATEGORY,
            description="Loads chunk chunk_index (chunk_frames frames) of a video in the input "
                        "folder, to stream a file chunk by chunk, one queued job per chunk.",
            inputs=[
                io.Combo.Input("video", options=_input_videos(), upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder."),
                io.Int.Input("chunk_index", default=0, min=0, max=2**31 - 1,
                             control_after_generate=True, tooltip=CHUNK_INDEX_TOOLTIP),
                io.Int.Input("chunk_frames", default=16, min=4, max=4096, step=4,
                             tooltip="Frames per chunk; a multiple of 4 (one latent frame)."),
            ],
            outputs=[io.Image.Output(display_name="images"), io.Float.Output(display_name="fps")],
        )

    @classmethod
    def validate_inputs(cls, video: str) -> bool:
        return True  # see EditVideo.validate_inputs

    @classmethod
    def fingerprint_inputs(cls, video: str, **kwargs) -> float | str:
        return EditVideo.fingerprint_inputs(video)

    @classmethod
    def execute(cls, video: str, chunk_index: int, chunk_frames: int) -> io.NodeOutput:
        if chunk_frames % 4:
            raise ValueError(f"chunk_frames must be a multiple of 4, got {chunk_frames}")
        path = resolve_inside(folder_paths.get_input_directory(), video, "video")
        chunk, fps = CHUNK_READER.read(path, chunk_index, chunk_frames)  # refuses chunks past MAX_CHUNK_PIXELS
        return io.NodeOutput(chunk, float(fps))
