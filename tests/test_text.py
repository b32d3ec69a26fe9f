"""The text ensemble: tiny random T5 / ByT5 / CLIP folders through the real loading path, the
real all-MiniLM-L6-v2 (paraphrases, cache), bad input, and the DiT consuming the output."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamedit_core.config import PRESETS, TextMemberConfig
from streamedit_core.model.dit import StreamEditDiT
from streamedit_core.model.text import (BUILTIN_MINILM, MemberSpec, TextEnsemble, list_ensembles,
                                  minilm_folder)
from streamedit_core.types import TextEmbedding
from tests import text_helpers as th

PROMPTS = ["make it red", "convert the video to grayscale and turn the sky blue"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_encoders")
    th.make_tiny_ensemble(root)
    return root


@pytest.fixture(scope="module")
def tiny(tiny_root):
    return TextEnsemble.from_folder(tiny_root / "tiny-paper")


@pytest.fixture
def minilm(minilm16):
    """The shared real MiniLM ensemble (conftest, session-scoped)."""
    return minilm16


@contextlib.contextmanager
def count_forwards(ensemble: TextEnsemble):
    """Yields [n]: the number of encoder forward calls made inside the block."""
    calls = [0]
    hooks = [m.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
             for m in ensemble.members]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


# --- Tiny T5 / ByT5 / CLIP folders, loaded exactly like real ones ----------------------------

def test_tiny_ensemble_shapes_masks_and_dtype(tiny):
    assert tiny.name == "tiny-paper"
    assert tiny.member_configs == (TextMemberConfig("t5", th.T5_DIM, th.T5_TOKENS),
                                   TextMemberConfig("byt5", th.BYT5_DIM, th.BYT5_TOKENS),
                                   TextMemberConfig("clip", th.CLIP_DIM, th.CLIP_TOKENS))
    emb = tiny.encode(PROMPTS)
    assert emb.batch_size == 2
    for member, cfg, states, mask in zip(tiny.members, tiny.member_configs, emb.states, emb.masks):
        assert states.shape == (2, cfg.max_tokens, cfg.dim)
        assert states.dtype == torch.float32 and states.device.type == "cpu"
        assert mask.shape == (2, cfg.max_tokens) and mask.dtype == torch.bool
        # The mask marks the real tokens (special tokens included), left-aligned; padding is zero.
        counts = [min(n, cfg.max_tokens) for n in member.token_count(PROMPTS)]
        assert mask.sum(1).tolist() == counts
        assert torch.equal(mask, torch.arange(cfg.max_tokens)[None] < torch.tensor(counts)[:, None])
        assert states[~mask].abs().max() == 0 and states[mask].abs().amin(-1).gt(0).all()


def test_states_are_the_encoders_own_outputs(tiny, tiny_root):
    """What encode returns is the folder's model run on the folder's tokenizer."""
    from transformers import AutoTokenizer, ByT5Tokenizer, CLIPTextModel, T5EncoderModel

    folder = tiny_root / "tiny-paper"
    emb = tiny.encode(PROMPTS[0])
    for i, (cls, tok) in enumerate([(T5EncoderModel, AutoTokenizer.from_pretrained(folder / "t5")),
                                    (T5EncoderModel, ByT5Tokenizer()),
                                    (CLIPTextModel, AutoTokenizer.from_pretrained(folder / "clip"))]):
        model = cls.from_pretrained(folder / ["t5", "byt5", "clip"][i]).eval()
        ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state[0]  # [n, d]
        n = ids.shape[1]
        torch.testing.assert_close(emb.states[i][0, :n], ref, atol=1e-5, rtol=1e-5)


def test_batch_equals_one_by_one(tiny):
    """Padding in a batch does not leak into the real tokens of its rows."""
    batch = tiny.encode(PROMPTS)
    tiny.clear_cache()
    for row, prompt in enumerate(PROMPTS):
        single = tiny.encode(prompt)
        for s_batch, s_single in zip(batch.states, single.states):
            torch.testing.assert_close(s_batch[row], s_single[0], atol=1e-5, rtol=1e-5)


def test_full_clip_folder_loads_its_text_tower(tmp_path):
    """MetaCLIP ships a whole CLIPModel; the member uses its text tower."""
    full = th.save_clip_full(tmp_path / "metaclip")
    ens = TextEnsemble([MemberSpec("clip", str(tmp_path / "metaclip"), 8)])
    assert ens.member_configs == (TextMemberConfig("clip", th.CLIP_DIM, 8),)
    emb = ens.encode("make it red")
    ids = th.clip_tokenizer()("make it red", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = full.text_model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(emb.states[0][0, :ids.shape[1]], ref, atol=1e-5, rtol=1e-5)


def test_ul2_style_spiece_model_folder(tmp_path):
    """UL2 ships spiece.model, no tokenizer.json: transformers converts it (needs protobuf)."""
    pytest.importorskip("google.protobuf")
    import sentencepiece as spm
    from transformers import T5EncoderModel

    folder = th.save_t5_spiece(tmp_path / "ul2")
    ens = TextEnsemble([MemberSpec("t5", str(folder), 32)])
    prompt = "Turn the SKY blue, café ½"
    ids = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).encode(prompt) + [1]
    emb = ens.encode(prompt)
    assert emb.masks[0].sum() == len(ids)
    with torch.no_grad():
        ref = T5EncoderModel.from_pretrained(folder).eval()(input_ids=torch.tensor([ids])).last_hidden_state
    torch.testing.assert_close(emb.states[0][:, :len(ids)], ref, atol=1e-5, rtol=1e-5)


def test_spiece_model_without_protobuf_is_a_clear_error(tmp_path, monkeypatch):
    import transformers.utils

    folder = th.save_t5_spiece(tmp_path / "ul2")
    monkeypatch.setattr(transformers.utils, "is_protobuf_available", lambda: False)
    with pytest.raises(ValueError, match=r"text member 0 \(t5, .*ul2'\): reading spiece.model needs "
                                         r"the 'protobuf' package"):
        TextEnsemble([MemberSpec("t5", str(folder), 16)])


def test_bfloat16_encoders_still_return_cpu_float32(tiny_root, tiny):
    ens = TextEnsemble.from_folder(tiny_root / "tiny-paper", dtype=torch.bfloat16)
    emb, ref = ens.encode(PROMPTS), tiny.encode(PROMPTS)
    assert all(m.model.dtype == torch.bfloat16 for m in ens.members)
    for s, r in zip(emb.states, ref.states):
        assert s.dtype == torch.float32 and s.device.type == "cpu"
        torch.testing.assert_close(s, r, atol=0.1, rtol=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_encoders_match_cpu(tiny_root, tiny):
    ens = TextEnsemble.from_folder(tiny_root / "tiny-paper", device="cuda")
    emb, ref = ens.encode(PROMPTS), tiny.encode(PROMPTS)
    assert all(next(m.model.parameters()).is_cuda for m in ens.members)
    for s, r in zip(emb.states, ref.states):
        assert s.device.type == "cpu" and s.dtype == torch.float32
        torch.testing.assert_close(s, r, atol=1e-4, rtol=1e-4)
    ens.offload()
    assert all(not next(m.model.parameters()).is_cuda for m in ens.members)
    ens.encode("turn it into a painting")  # a miss brings them back
    assert all(next(m.model.parameters()).is_cuda for m in ens.members)


def test_nothing_touches_the_network(tiny_root, monkeypatch):
    """local_files_only on a folder path is enough: no socket is opened, even without HF_HUB_OFFLINE."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    attempts = []

    def refuse(*args, **kwargs):  # recorded too, in case a library swallows the error
        attempts.append(args)
        raise OSError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for ens in (TextEnsemble.from_folder(tiny_root / "tiny-paper"), TextEnsemble.minilm(16)):
        assert ens.encode("make it red").masks[0].any()
    assert attempts == []


def test_works_without_torchvision_timm_open_clip(tiny_root):
    """The text path needs none of them (ComfyUI installs torchvision; transformers would use it)."""
    script = (
        "import sys\n"
        "for name in ('torchvision', 'timm', 'open_clip'):\n"
        "    sys.modules[name] = None  # find_spec() -> None, import -> ImportError: not installed\n"
        "from streamedit_core.model.text import TextEnsemble\n"
        f"for ens in (TextEnsemble.from_folder({str(tiny_root / 'tiny-paper')!r}), TextEnsemble.minilm(16)):\n"
        "    assert all(m.any() for m in ens.encode('make it red').masks)\n"
        "print('ok')\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# --- Cache and offloading --------------------------------------------------------------------

def test_cache_hit_does_no_encoder_work(tiny):
    tiny.encode("turn the sky red")  # loads the encoders if no test did yet
    tiny.clear_cache()
    with count_forwards(tiny) as calls:
        first = tiny.encode(["turn the sky red", "make it a watercolor painting"])
        assert calls[0] == 3  # one batch per member for both misses
        hits = tiny.hits
        again = tiny.encode(["make it a watercolor painting", "turn the sky red"])
        assert calls[0] == 3 and tiny.hits == hits + 2
    for a, b in zip(first.states, again.states):
        assert torch.equal(a, b.flip(0))
    again.states[0].zero_()  # callers get copies: the cache is not theirs to change
    assert torch.equal(tiny.encode("turn the sky red").states[0], first.states[0][:1])


def test_cache_is_lru_and_bounded(tiny_root):
    ens = TextEnsemble.from_folder(tiny_root / "tiny-paper", cache_size=2)
    ens.encode(["make it red", "make it blue"])
    with count_forwards(ens) as calls:
        ens.encode("make it red")  # hit: now the most recent
        ens.encode("make the video black")  # miss: evicts "make it blue"
        assert calls[0] == 3
        ens.encode("make it red")
        assert calls[0] == 3
        ens.encode("make it blue")
        assert calls[0] == 6


def test_offload_keeps_cache_and_reloads_on_miss(tiny_root):
    ens = TextEnsemble.from_folder(tiny_root / "tiny-paper")
    before = ens.encode(PROMPTS)
    ens.offload(free=True)
    assert all(m.model is None for m in ens.members)
    cached = ens.encode(PROMPTS[0])  # a hit needs no encoder
    assert all(m.model is None for m in ens.members)
    ens.clear_cache()
    again = ens.encode(PROMPTS)  # a miss loads them again, same numbers
    assert all(m.model is not None for m in ens.members)
    for a, b, c in zip(before.states, again.states, cached.states):
        assert torch.equal(a, b) and torch.equal(a[:1], c)


# --- Bad input -------------------------------------------------------------------------------

def test_empty_prompt_is_the_null_embedding(tiny):
    """"" and whitespace = no instruction: all masks False, zeros, no encoder work."""
    tiny.encode("load the encoders")
    tiny.clear_cache()
    with count_forwards(tiny) as calls:
        assert not tiny.encode(["", " \t\n"]).masks[0].any() and calls[0] == 0
        emb = tiny.encode(["", "   \n", "make it red"])
        assert calls[0] == 3  # one batch per member, for "make it red" only
    null = tiny.null(2)
    for s, m, ns, nm in zip(emb.states, emb.masks, null.states, null.masks):
        assert torch.equal(s[:2], ns) and torch.equal(m[:2], nm) and not m[:2].any()
        assert m[2].any()
    assert tiny.encode("").masks[0].shape == (1, th.T5_TOKENS)


def test_too_long_prompt_is_truncated_with_a_warning(tiny, caplog):
    prompt = " ".join(["make it red"] * 20)
    with caplog.at_level(logging.WARNING, logger="streamedit_core.model.text"):
        emb = tiny.encode(prompt)
    for cfg, mask in zip(tiny.member_configs, emb.masks):
        assert mask.all() and mask.shape == (1, cfg.max_tokens)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3
    assert all("truncated to max_tokens" in w and "make it red make" in w for w in warned)
    assert f"max_tokens={th.T5_TOKENS}" in warned[0] and "(t5," in warned[0]


def test_non_string_prompts_are_type_errors(tiny):
    with pytest.raises(TypeError, match="got int"):
        tiny.encode(3)
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a str, got NoneType"):
        tiny.encode(["make it red", None])
    with pytest.raises(ValueError, match="empty list"):
        tiny.encode([])


def test_bad_ensemble_arguments(tiny):
    with pytest.raises(ValueError, match="at least one member"):
        TextEnsemble([])
    with pytest.raises(ValueError, match="cache_size must be >= 0, got -1"):
        TextEnsemble.minilm(16, cache_size=-1)
    with pytest.raises(ValueError, match=r"'tiny-paper' has no 'sentence' member \(kinds \['t5', 'byt5', 'clip'\]\)"):
        tiny.sentence_vectors("make it red")


def test_missing_folder_and_manifest_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere.*does not exist.*ensemble\.json"):
        TextEnsemble.from_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"has no ensemble\.json.*\"members\""):
        TextEnsemble.from_folder(tmp_path)


@pytest.mark.parametrize("manifest, message", [
    ("{not json", "not valid JSON"),
    ({"name": "x"}, r"keys \['members', 'name'\], got \['name'\]"),
    ({"name": "x", "members": []}, "'members' must be a non-empty list"),
    ({"name": "x", "members": [{"kind": "t5", "path": "a"}]}, r"member 0 must have exactly the keys"),
    ({"name": "x", "members": [{"kind": "gpt", "path": "a", "max_tokens": 8}]}, "unknown text member kind 'gpt'"),
    ({"name": "x", "members": [{"kind": "t5", "path": "a", "max_tokens": 0}]}, "positive integer, got 0"),
    ({"name": "x", "members": [{"kind": "t5", "path": BUILTIN_MINILM, "max_tokens": 8}]},
     "kind must be 'sentence'"),
])
def test_bad_manifests(tmp_path, manifest, message):
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (tmp_path / "ensemble.json").write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        TextEnsemble.from_folder(tmp_path)
    assert "ensemble.json" in str(info.value)


def test_member_folder_missing_files(tmp_path, tiny_root):
    with pytest.raises(ValueError, match=r"'.*/ul2' does not exist; expected a t5 encoder folder "
                                         r"holding config\.json; model\.safetensors"):
        TextEnsemble([MemberSpec("t5", str(tmp_path / "ul2"), 8)])
    (tmp_path / "ul2").mkdir()
    (tmp_path / "ul2" / "config.json").write_text((tiny_root / "tiny-paper/t5/config.json").read_text())
    with pytest.raises(ValueError, match=r"lacks model\.safetensors or .*, tokenizer\.json or spiece\.model"):
        TextEnsemble([MemberSpec("t5", str(tmp_path / "ul2"), 8)])
    with pytest.raises(ValueError, match=r"unknown builtin text member 'builtin:byt5'"):
        TextEnsemble([MemberSpec("byt5", "builtin:byt5", 8)])


def test_member_config_must_match_its_kind(tiny_root):
    folder = tiny_root / "tiny-paper"
    with pytest.raises(ValueError, match=r"text member 0 \(t5, .*model_type 'bert'.*kind 't5'"):
        TextEnsemble([MemberSpec("t5", str(minilm_folder()), 8)])
    with pytest.raises(ValueError, match=r"model_type 't5'.*kind 'clip'"):
        TextEnsemble([MemberSpec("clip", str(folder / "t5"), 8)])
    with pytest.raises(ValueError, match=r"text member 1 \(byt5.*vocab_size=\d+ is not ByT5's"):
        TextEnsemble([MemberSpec("byt5", str(folder / "byt5"), 8), MemberSpec("byt5", str(folder / "t5"), 8)])
    with pytest.raises(ValueError, match=f"max_tokens=40 exceeds the {th.CLIP_POSITIONS} token positions"):
        TextEnsemble([MemberSpec("clip", str(folder / "clip"), 40)])


def test_roberta_style_positions_limit(tmp_path):
    """RoBERTa/MPNet position ids start after the padding id: 20 table rows hold 18 tokens."""
    from transformers import RobertaConfig

    folder = tmp_path / "roberta"
    RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=20, pad_token_id=1).save_pretrained(folder)
    for name in ("model.safetensors", "tokenizer.json"):  # never read: the config check comes first
        (folder / name).write_text("")
    with pytest.raises(ValueError, match=r"\(sentence, .*max_tokens=19 exceeds the 18 token positions"):
        TextEnsemble([MemberSpec("sentence", str(folder), 19)])


def test_weights_that_do_not_match_the_config(tmp_path, tiny_root):
    folder = tmp_path / "t5"
    th.save_t5(folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "d_ff": 128}))
    ens = TextEnsemble([MemberSpec("t5", str(folder), 8)])  # configs are read eagerly, weights lazily
    with pytest.raises(ValueError, match=r"text member 0 \(t5.*could not load the weights"):
        ens.encode("make it red")


def test_non_finite_encoder_output_is_an_error(tiny_root):
    ens = TextEnsemble.from_folder(tiny_root / "tiny-paper")
    ens.encode("load the encoders")

    def overflow(module, args, out):
        out.last_hidden_state.fill_(float("inf"))  # as T5 can overflow in float16

    ens.members[1].model.register_forward_hook(overflow)
    with pytest.raises(ValueError, match=r"text member 1 \(byt5, .*non-finite states in torch.float32"):
        ens.encode("make it red")
    assert "make it red" not in ens._cache  # nothing half-encoded is kept


def test_manifest_mixing_builtin_minilm_and_a_folder(tiny_root, tmp_path):
    th.write_manifest(tmp_path / "mixed", "mixed", [
        {"kind": "sentence", "path": "builtin:minilm", "max_tokens": 16},
        {"kind": "t5", "path": str(tiny_root / "tiny-paper" / "t5"), "max_tokens": 8},  # absolute
    ])
    ens = TextEnsemble.from_folder(tmp_path / "mixed")
    assert ens.member_configs == (TextMemberConfig("sentence", 384, 16), TextMemberConfig("t5", th.T5_DIM, 8))
    emb = ens.encode(["make it red", ""])
    assert [m.sum(1).tolist() for m in emb.masks] == [[5, 0], [4, 0]]  # [CLS] make it red [SEP]; 3 + </s>


def test_check_compatible_names_member_kind_and_dims(tiny, minilm):
    minilm.check_compatible(PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"text member 0: .*kind=sentence dim=384 max_tokens=16, "
                                         r"the model expects kind=sentence dim=384 max_tokens=32"):
        minilm.check_compatible(PRESETS["demo"])
    with pytest.raises(ValueError, match=r"has 3 members \[t5/32/12, byt5/24/24, clip/16/10\] but the "
                                         r"model expects 1 \[sentence/384/16\]"):
        tiny.check_compatible(PRESETS["tiny"].dit)


def test_builtin_for_sizes_minilm_to_the_model_and_names_other_members():
    for name in ("tiny", "demo"):  # max_tokens 16 and 32: the ensemble follows the model
        ens = TextEnsemble.builtin_for(PRESETS[name], cache_size=0)
        assert ens.member_configs == PRESETS[name].dit.text_members
    with pytest.raises(ValueError, match=r"model '2b' expects text members \[t5/4096/256, "
                                         r"byt5/1472/128, clip/1024/77\].*not the built-in MiniLM"):
        TextEnsemble.builtin_for(PRESETS["2b"])


def test_list_ensembles(tiny_root, tmp_path):
    (tiny_root / "not-an-ensemble").mkdir(exist_ok=True)
    assert list_ensembles(tiny_root) == ["tiny-paper"]
    assert list_ensembles(tmp_path / "missing") == []


# --- The real all-MiniLM-L6-v2 ---------------------------------------------------------------

def test_minilm_paraphrases_score_closer_than_other_edits(minilm):
    prompts = ["convert to grayscale", "convert the video to grayscale",
               "make it a watercolor painting", "turn it into a watercolor painting",
               "make it black and white", "turn the sky red"]
    vectors = minilm.sentence_vectors(prompts)  # [6, 384], unit length
    sim = vectors @ vectors.T
    print("\nMiniLM cosine similarity:")
    for p, row in zip(prompts, sim.tolist()):
        print(f"  {p:36s} " + " ".join(f"{v:5.2f}" for v in row))
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(6))
    for a, b in [(0, 1), (2, 3)]:  # paraphrase pairs
        others = [j for j in range(len(prompts)) if j not in (a, b)]
        assert sim[a, b] > sim[a, others].max() and sim[b, a] > sim[b, others].max()
    assert minilm.member_configs == (TextMemberConfig("sentence", 384, 16),)
    assert torch.equal(minilm.sentence_vectors("")[0], torch.zeros(384))


def test_minilm_cache_hit_does_no_encoder_work(minilm):
    prompt, other = "make it look like an oil painting (cache test)", "a pencil sketch (cache test)"
    minilm.encode(prompt)
    with count_forwards(minilm) as calls:
        emb = minilm.encode(prompt)
        assert calls[0] == 0
        minilm.encode(other)
        assert calls[0] == 1
    assert emb.states[0].shape == (1, 16, 384)


def test_blend_of_two_prompts(minilm):
    """set_prompt's smooth switch: the ends of the blend are the two prompts."""
    a, b = minilm.encode("convert to grayscale"), minilm.encode("make it a watercolor painting")
    assert torch.equal(a.blend(b, 0.0).states[0], a.states[0])
    assert torch.equal(a.blend(b, 1.0).states[0], b.states[0])
    mid = a.blend(b, 0.5)
    torch.testing.assert_close(mid.states[0], (a.states[0] + b.states[0]) / 2)
    assert torch.equal(mid.masks[0], a.masks[0] | b.masks[0])


# --- The DiT consumes the ensemble's output --------------------------------------------------

def _perturbed_dit(cfg, seed=0):
    """Zero-initialised output layers would hide the text's effect: perturb every weight."""
    torch.manual_seed(seed)
    dit = StreamEditDiT(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dit.eval()


def _latents(B, T=2, h=4, w=4):
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(B, 12, T, h, w, generator=g), torch.randn(B, 12, T, h, w, generator=g)
    return x, torch.tensor([[0.0, 0.7]]).expand(B, -1), cond


@pytest.mark.parametrize("which", ["minilm", "tiny-paper"])
def test_dit_consumes_the_ensemble_output(which, minilm, tiny):
    """Tiny preset + real MiniLM, and a DiT configured for the 3-member T5/ByT5/CLIP ensemble."""
    ens = minilm if which == "minilm" else tiny
    cfg = PRESETS["tiny"].dit
    if which != "minilm":
        cfg = dataclasses.replace(cfg, text_members=ens.member_configs)
    ens.check_compatible(cfg)
    dit = _perturbed_dit(cfg)
    prompts = ["convert to grayscale", "make it a watercolor painting", ""]
    text = ens.encode(prompts)
    x, t, cond = _latents(len(prompts))
    with torch.no_grad():
        v = dit(x, t, cond, text)
        v_null = dit(x, t, cond, ens.null(len(prompts)))
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert not torch.allclose(v[0], v[1], atol=1e-4)  # the prompt changes the prediction
    torch.testing.assert_close(v[2], v_null[2])  # "" is exactly the null prompt
    assert isinstance(text, TextEmbedding)
