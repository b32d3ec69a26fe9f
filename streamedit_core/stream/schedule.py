"""Prompt schedules: which prompt a stream asks for at each video frame.

A schedule is a list of (frame, prompt) entries, the first at frame 0, and a transition length:
from an entry's frame on, the stream converges to its prompt, blended in over
`transition_frames` video frames (`StreamEditor.set_prompt`). Frames count from the start of
the stream. The CLI (`--schedule`), the editor and the ComfyUI Prompt Schedule node all read the
same text format, one entry per line (or separated by ';'):

    0: make it a pencil sketch
    48: make it sepia
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_SEPARATORS = re.compile(r"[\n;]")


def check_prompt(prompt: Any) -> str:
    """The prompt itself; TypeError/ValueError for a non-string or an empty prompt."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"prompt is empty ({prompt!r}); describe the edit, e.g. "
                         "'make it a pencil sketch'")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes that were not UTF-8 (a shell's argv keeps them as surrogates)
        raise ValueError(f"prompt {prompt!r} is not valid UTF-8 text (character {e.start}); type it "
                         "again or save the file that holds it as UTF-8") from None
    return prompt


@dataclass(frozen=True)
class PromptSchedule:
    """entries: ((frame, prompt), ...) sorted by frame, the first at 0, frames distinct."""
    entries: tuple[tuple[int, str], ...]
    transition_frames: int = 0

    def __post_init__(self) -> None:
        if not self.entries or self.entries[0][0] != 0:
            raise ValueError(f"a prompt schedule must start at frame 0, got {list(self.entries)}")
        frames = [f for f, _ in self.entries]
        if frames != sorted(set(frames)):
            raise ValueError(f"prompt schedule frames must increase, each named once, got {frames}")
        for frame, prompt in self.entries:
            if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
                raise ValueError(f"prompt schedule frame must be an int >= 0, got {frame!r}")
            check_prompt(prompt)
        t = self.transition_frames
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"transition_frames must be an int >= 0, got {t!r}")

    @classmethod
    def single(cls, prompt: str, transition_frames: int = 0) -> "PromptSchedule":
        """One prompt for the whole stream (switched to over `transition_frames` when a running
        stream gets it)."""
        return cls(((0, check_prompt(prompt)),), transition_frames)

    @classmethod
    def parse(cls, text: str, transition_frames: int = 0) -> "PromptSchedule":
        """'frame: prompt' entries, one per line or separated by ';', in any order."""
        if not isinstance(text, str):
            raise TypeError(f"prompt schedule must be a string, got {type(text).__name__}")
        entries = []
        for number, line in enumerate(_SEPARATORS.split(text), 1):
            if not line.strip():
                continue
            frame, sep, prompt = line.partition(":")
            if not sep or not frame.strip().isdigit():
                raise ValueError(f"prompt schedule entry {number} {line.strip()!r}: expected "
                                 "'frame: prompt', e.g. '0: make it a pencil sketch'")
            entries.append((int(frame), check_prompt(prompt.strip())))
        frames = sorted(f for f, _ in entries)
        if len(set(frames)) != len(frames):
            raise ValueError(f"the prompt schedule names a frame twice: {frames}")
        if not entries or frames[0] != 0:
            raise ValueError(f"the prompt schedule must start at frame 0, got {text!r}")
        return cls(tuple(sorted(entries)), transition_frames)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(p for _, p in self.entries)

    @property
    def first(self) -> str:
        return self.entries[0][1]

    def prompt_at(self, frame: int) -> str:
        """The prompt of the last entry at or before video frame `frame`."""
        return next(p for f, p in reversed(self.entries) if f <= frame)

    def __str__(self) -> str:
        return "; ".join(f"{f}: {p}" for f, p in self.entries)
