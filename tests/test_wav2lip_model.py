"""Wav2Lip256: upstream checkpoint names and shapes, forward sizes, BatchNorm folding, loading errors."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from wav2lip import onednn
from wav2lip.checkpoint import (
    CheckpointMismatch,
    cpu_has_bf16,
    fuse_batchnorm,
    load_model,
    prepare,
    read_state_dict,
    save_checkpoint,
)
from wav2lip.infer import predict
from wav2lip.model import Conv2d, Conv2dTranspose, Wav2Lip256
from wav2lip.random_init import random_wav2lip

TSV = Path(__file__).parents[1] / ".." / "shared" / "compat" / "wav2lip256_state_dict.tsv"


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
                m.num_batches_tracked.fill_(1000)
    return model


@pytest.fixture(scope="module")
def plain() -> Wav2Lip256:
    # Random weights with measured (non-identity) BatchNorm stats and an unsaturated output.
    return random_wav2lip(seed=0)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mel = torch.rand(1, 1, 80, 16, generator=g) * 8 - 4
    face = torch.rand(1, 6, 256, 256, generator=g)
    face[:, :3, 128:] = 0  # masked lower half, as at inference
    return mel, face


@pytest.fixture(scope="module")
def reference(plain: Wav2Lip256, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return plain(*inputs)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wav2lip_ckpt")


def read_tsv(path: Path) -> dict[str, list[int]]:
    rows = path.read_text().splitlines()[1:]
    out = {}
    for row in rows:
        name, shape = row.split("\t")
        out[name] = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
    return out


@pytest.mark.skipif(not TSV.is_file(), reason=f"{TSV} not present")
def test_state_dict_names_and_shapes_match_upstream_checkpoint() -> None:
    expected = read_tsv(TSV)
    got = {k: list(v.shape) for k, v in Wav2Lip256().state_dict().items()}
    assert len(expected) == 380
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    assert list(got) == list(expected)  # same order too: a saved file lists them as upstream does


def test_every_stage_has_the_upstream_spatial_size(plain: Wav2Lip256, inputs, reference: torch.Tensor) -> None:
    mel, face = inputs
    with torch.no_grad():
        audio = plain.audio_encoder(mel)
        sizes = []
        x = face
        for block in plain.face_encoder_blocks:
            x = block(x)
            sizes.append(tuple(x.shape[1:]))
    assert tuple(audio.shape) == (1, 512, 1, 1)
    assert sizes == [
        (16, 256, 256), (32, 128, 128), (64, 64, 64), (128, 32, 32),
        (256, 16, 16), (512, 8, 8), (512, 4, 4), (512, 1, 1),
    ]  # fmt: skip
    assert tuple(reference.shape) == (1, 3, 256, 256)
    assert float(reference.min()) >= 0.0 and float(reference.max()) <= 1.0
    # Off the sigmoid's flat ends, so the comparisons in these tests can tell models apart.
    assert float(((reference > 0.02) & (reference < 0.98)).float().mean()) > 0.9
    # The output must depend on the audio: a different mel changes the picture.
    with torch.no_grad():
        other = plain(-mel, face)
    assert float((other - reference).abs().max()) > 0.05


def test_fused_model_equals_plain_one(plain: Wav2Lip256, inputs, reference: torch.Tensor) -> None:
    fused = fuse_batchnorm(copy.deepcopy(plain))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.inference_mode():
        out = fused(*inputs)
    assert float((out - reference).abs().max()) < 1e-3
    # The statistics matter: the same weights with fresh BatchNorm stats give another picture,
    # so the 1e-3 agreement above is not a coincidence of saturated outputs.
    reset = copy.deepcopy(plain)
    for m in reset.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    with torch.no_grad():
        assert float((reset(*inputs) - reference).abs().max()) > 0.05


@pytest.mark.parametrize("transpose", [False, True])
def test_folding_uses_the_output_channel_axis_of_each_conv_kind(transpose: bool) -> None:
    torch.manual_seed(3)
    conv = nn.ConvTranspose2d(4, 6, 3, 2, 1, 1) if transpose else nn.Conv2d(4, 6, 3, 1, 1, bias=False)
    seq = randomise_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(6)), seed=4).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        want = seq(x)
        fuse_batchnorm(seq)
        got = seq(x)
    assert isinstance(seq[1], nn.Identity)
    assert float((got - want).abs().max()) < 1e-5


def test_checkpoint_round_trip_with_and_without_module_prefix(
    plain: Wav2Lip256, inputs, reference: torch.Tensor, checkpoint_dir: Path
) -> None:
    outputs = []
    for prefixed in (False, True):
        path = checkpoint_dir / f"w2l_{prefixed}.pth"
        save_checkpoint(plain, path, prefix_module=prefixed)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert set(saved) == {"state_dict"}
        assert all(k.startswith("module.") == prefixed for k in saved["state_dict"])
        model = load_model(path, device="cpu")
        mel, face = (t.contiguous(memory_format=torch.channels_last) for t in inputs)
        with torch.inference_mode():
            outputs.append(model(mel, face))
        path.unlink()
    assert torch.equal(outputs[0], outputs[1])
    assert float((outputs[0] - reference).abs().max()) < 1e-3
    with torch.inference_mode():
        nchw = model(*inputs)  # a caller that forgot channels_last still gets the right answer
    assert float((nchw - reference).abs().max()) < 1e-3


def test_loaded_model_is_prepared_for_cpu_inference(plain: Wav2Lip256, checkpoint_dir: Path) -> None:
    path = checkpoint_dir / "bare.pth"
    torch.save(plain.state_dict(), path)  # a bare state dict, no {"state_dict": ...} wrapper
    model = load_model(path, device="cpu")
    path.unlink()
    assert not model.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    if onednn.available():
        blocks = [m for m in model.modules() if isinstance(m, onednn.FusedConvBlock)]
        assert len(blocks) == 54  # every conv block of the network (7 of them transposed)
        assert sum(b.transpose for b in blocks) == 7
    else:
        conv = model.face_encoder_blocks[1][0].conv_block[0]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_a_batch_through_the_prepared_model_gives_each_frame_its_plain_answer(plain: Wav2Lip256) -> None:
    # On CPU the prepared model runs a batch frame by frame: each frame must still get its own.
    g = torch.Generator().manual_seed(3)
    mel = torch.rand(3, 1, 80, 16, generator=g) * 8 - 4
    face = torch.rand(3, 6, 256, 256, generator=g)
    model = prepare(copy.deepcopy(plain), "cpu")
    with torch.inference_mode():
        got = model(*(t.contiguous(memory_format=torch.channels_last) for t in (mel, face)))
    with torch.no_grad():
        want = plain(mel, face)
    assert got.shape == (3, 3, 256, 256)
    assert float((got - want).abs().max()) < 1e-3
    assert float((want[0] - want[1]).abs().max()) > 1e-2  # the frames differ, so a mix-up would show


def test_eager_prepared_cpu_model_equals_plain_one(plain: Wav2Lip256, inputs, reference: torch.Tensor) -> None:
    # The path taken when PyTorch has no oneDNN: folded BatchNorm, channels_last, eager ops.
    model = prepare(copy.deepcopy(plain), "cpu", onednn=False)
    assert not any(isinstance(m, onednn.FusedConvBlock) for m in model.modules())
    mel, face = inputs
    with torch.inference_mode():
        out = model(
            mel.contiguous(memory_format=torch.channels_last), face.contiguous(memory_format=torch.channels_last)
        )
    assert float((out - reference).abs().max()) < 1e-3


@pytest.mark.skipif(not onednn.available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize(
    "block",
    [
        lambda: Conv2d(4, 4, 3, 1, 1, residual=True),
        lambda: Conv2d(4, 6, 3, (3, 2), 1),
        lambda: Conv2dTranspose(6, 4, 3, 2, 1, output_padding=1),
        lambda: Conv2dTranspose(6, 4, 4, 1, 0),
    ],
    ids=["residual", "strided", "transposed", "transposed-k4"],
)
def test_onednn_block_computes_the_eager_block(block) -> None:
    torch.manual_seed(6)
    blk = randomise_batchnorm(block(), seed=7).eval()
    cin = blk.conv_block[0].in_channels
    x = torch.randn(3, cin, 12, 10) - 0.2
    with torch.no_grad():
        want = blk(x.clone())
        fuse_batchnorm(blk)
        fused = onednn.FusedConvBlock(blk)
    with torch.inference_mode():
        got = fused(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == want.shape
    assert float((got - want).abs().max()) < 1e-4
    assert float((want == 0).float().mean()) > 0.1  # the ReLU cut something: it is really applied


def test_onednn_block_refuses_an_unfolded_block() -> None:
    with pytest.raises(ValueError, match="fold BatchNorm first"):
        onednn.FusedConvBlock(Conv2d(2, 2, 3, 1, 1))


def test_predict_masks_the_lower_half_and_matches_the_plain_model(plain: Wav2Lip256) -> None:
    rng = np.random.default_rng(5)
    faces = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    mel = rng.uniform(-4, 4, (1, 80, 16)).astype(np.float32)
    out = predict(prepare(copy.deepcopy(plain), "cpu"), mel, faces)
    assert out.shape == (1, 256, 256, 3) and out.dtype == np.uint8
    ref_face = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    masked = ref_face.clone()
    masked[:, :, 128:] = 0
    with torch.no_grad():
        want = plain(torch.from_numpy(mel)[:, None], torch.cat((masked, ref_face), 1))
    want = (want * 255).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(np.float32) - want).max() <= 1.0


@pytest.fixture(scope="module")
def full_state(plain: Wav2Lip256) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in plain.state_dict().items()}


def test_mismatch_lists_missing_and_unexpected_names(full_state, checkpoint_dir: Path) -> None:
    state = dict(full_state)
    del state["audio_encoder.3.conv_block.0.weight"]
    del state["output_block.1.bias"]
    state["face_encoder_blocks.9.0.conv_block.0.weight"] = torch.zeros(1)
    path = checkpoint_dir / "truncated.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatch) as err:
        load_model(path, device="cpu")
    path.unlink()
    msg = str(err.value)
    assert str(path) in msg
    assert "2 missing: audio_encoder.3.conv_block.0.weight, output_block.1.bias" in msg
    assert "1 unexpected: face_encoder_blocks.9.0.conv_block.0.weight" in msg
    assert "Traceback" not in msg


def test_mismatch_names_the_first_wrong_shape(full_state, checkpoint_dir: Path) -> None:
    state = {"module." + k: v for k, v in full_state.items()}
    state["module.face_encoder_blocks.2.0.conv_block.0.weight"] = torch.zeros(64, 32, 5, 5)
    state["module.output_block.1.weight"] = torch.zeros(4, 32, 1, 1)
    path = checkpoint_dir / "wrong_shape.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatch) as err:
        load_model(path, device="cpu")
    path.unlink()
    msg = str(err.value)
    assert (
        "first shape mismatch: face_encoder_blocks.2.0.conv_block.0.weight expected [64, 32, 3, 3] got [64, 32, 5, 5]"
        in msg
    )
    assert "output_block" not in msg  # only the first one
    assert "missing" not in msg and "unexpected" not in msg  # the prefix was stripped


def test_a_wrong_model_lists_at_most_ten_names_per_kind(checkpoint_dir: Path) -> None:
    path = checkpoint_dir / "other.pth"
    torch.save({f"layer{i}.weight": torch.zeros(2) for i in range(15)}, path)
    with pytest.raises(CheckpointMismatch) as err:
        load_model(path, device="cpu")
    msg = str(err.value)
    assert "15 unexpected: layer0.weight" in msg and "layer9.weight and 5 more" in msg
    assert "layer10.weight" not in msg
    assert "missing: face_encoder_blocks.0.0.conv_block.0.weight" in msg


def test_missing_checkpoint_says_what_to_copy_where(tmp_path: Path) -> None:
    path = tmp_path / "models" / "wav2lip.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert "copy wav2lip256.pth to models/wav2lip.pth" in str(err.value)


def test_a_file_that_is_not_a_checkpoint_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_model(path, device="cpu")


def test_training_extras_with_numpy_scalars_load_but_pickled_code_does_not(tmp_path: Path) -> None:
    path = tmp_path / "trained.pth"
    extras = {"global_step": np.int64(5000), "loss": np.float64(0.25), "global_epoch": 3}
    torch.save({"state_dict": {"module.output_block.1.bias": torch.ones(3)}, **extras}, path)
    assert list(read_state_dict(path)) == ["output_block.1.bias"]
    path.write_bytes(pickle.dumps({"state_dict": {}, "hook": Path("x")}, protocol=2))  # an arbitrary class
    with pytest.raises(ValueError, match="cannot read checkpoint .* as PyTorch weights") as err:
        read_state_dict(path)
    assert "weights_only" not in str(err.value)  # torch's advice to disable the check is not passed on


@pytest.mark.skipif(not cpu_has_bf16(), reason="no native bfloat16 on this CPU")
def test_cpu_bf16_model_stays_close_to_fp32(plain: Wav2Lip256) -> None:
    model = prepare(copy.deepcopy(plain), "cpu", cpu_bf16=True)
    assert next(model.parameters()).dtype == torch.bfloat16
    rng = np.random.default_rng(5)
    faces = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    mel = rng.uniform(-4, 4, (1, 80, 16)).astype(np.float32)
    fp32 = predict(prepare(copy.deepcopy(plain), "cpu"), mel, faces).astype(np.float32)
    err = np.abs(predict(model, mel, faces).astype(np.float32) - fp32)
    assert err.mean() < 3.0 and err.max() < 25.0  # grey levels of 255
    assert err.max() > 0  # really computed in another precision
