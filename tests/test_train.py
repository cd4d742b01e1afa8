"""`python -m mone.train` on the tiny synthetic set: learning, exact resume, safetensors-only files, export, DDP."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import mone
from mone.models import ALPHA_MAX, ALPHA_MIN
from mone.data import OBJECT_PATCH, patch_object_fraction
from mone.train import (AUGMENT, VAL_OFFSET, augment, dataset_info, iso_flops_factor, main, mask_router_loss,
                        parse_args, standardize, synthetic_items, train, validation_indices)

TINY = ["--dataset", "synthetic", "--model", "mone_vit_tiny_patch4_32", "--device", "cpu", "--batch-size", "32",
        "--eval-size", "32", "--workers", "0"]


def run(tmp: Path, *extra: str) -> dict:
    return train(parse_args([*TINY, "--out-dir", str(tmp), *extra]), "test")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_few_steps_lower_the_loss_and_the_export_loads_back(tmp_path):
    summary = run(tmp_path / "run", "--epochs", "3", "--train-size", "256", "--lr", "3e-3", "--warmup-epochs",
                  "0.25", "--drop-path", "0", "--log-every", "1", "--export", str(tmp_path / "assets" / "tiny"))
    steps = [r for r in records(tmp_path / "run" / "log.jsonl") if "loss" in r]
    losses = [r["loss"] for r in steps]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05
    # each MoNE log line carries the blocks' alphas, on which the router's gradient depends (Eq. 1); training keeps
    # them in [ALPHA_MIN, ALPHA_MAX] by projection, so the router always learns
    alphas = [block.alpha.item() for block in summary["model"].blocks]
    assert steps[-1]["alpha"] == [round(a, 4) for a in alphas]
    assert all(ALPHA_MIN - 1e-7 <= a <= ALPHA_MAX + 1e-7 for a in alphas)
    assert float(summary["model"].router.weight.grad.abs().sum()) > 0     # the last step moved the router
    card_path = tmp_path / "assets" / "tiny.json"
    card = json.loads(card_path.read_text())
    for key in ("model", "model_kwargs", "weights", "preprocess", "data", "config", "command", "commit", "started",
                "finished", "train_seconds", "hardware", "estimated_cpu_hours_here", "evaluation"):
        assert key in card
    assert card["weights"] == "tiny.safetensors" and (tmp_path / "assets" / "tiny.safetensors").is_file()
    assert card["model_kwargs"]["num_classes"] == 4 and card["preprocess"]["image_size"] == 32
    assert card["data"]["sizes"]["images_seen"] == 24 * 32 and card["stopped_early"] is None
    loaded = mone.load_model(card_path)
    trained = summary["model"]
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        for e_c in (0.3, 1.0):
            torch.testing.assert_close(loaded(x, effective_capacity=e_c), trained(x, effective_capacity=e_c),
                                       atol=1e-6, rtol=0)


def test_resume_continues_exactly(tmp_path):
    args = ("--epochs", "3", "--train-size", "64", "--log-every", "1", "--ckpt-every", "100")  # 2 steps per epoch
    run(tmp_path / "straight", *args)
    run(tmp_path / "resumed", *args, "--stop-at-step", "3")                  # interrupted mid-epoch
    assert json.loads((tmp_path / "resumed" / "ckpt.json").read_text())["step"] == 3
    with pytest.raises(ValueError, match="different config"):
        run(tmp_path / "resumed", *args, "--lr", "5e-4", "--resume")
    ckpt = tmp_path / "resumed" / "ckpt.json"                                 # a checkpoint from before a field
    meta = json.loads(ckpt.read_text())                                      # existed resumes with its default
    del meta["config"]["scenes_version"]
    ckpt.write_text(json.dumps(meta))
    run(tmp_path / "resumed", *args, "--resume", "--stop-at-step", "4")      # interrupted before an epoch's eval
    run(tmp_path / "resumed", *args, "--resume")
    final = [load_file(str(next((tmp_path / name).glob("ckpt-*.safetensors")))) for name in ("straight", "resumed")]
    assert final[0].keys() == final[1].keys() and any(k.startswith("optim/") for k in final[0])
    for key in final[0]:
        assert torch.equal(final[0][key], final[1][key]), key
    logs = [[{k: v for k, v in r.items() if k != "img_per_s"} for r in records(tmp_path / name / "log.jsonl")
             if "param_checksum" not in r] for name in ("straight", "resumed")]   # a checksum ends every process
    assert logs[0] == logs[1]
    # checkpoints are safetensors + JSON only: nothing pickled anywhere
    written = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {".safetensors", ".json", ".jsonl"}, written


def test_resume_after_a_kill_between_an_evaluation_and_the_next_checkpoint_logs_it_once(tmp_path):
    args = ("--epochs", "2", "--train-size", "64", "--log-every", "1", "--ckpt-every", "100")  # 2 steps per epoch
    run(tmp_path / "straight", *args)
    run(tmp_path / "killed", *args, "--stop-at-step", "2")             # checkpoint at the epoch's end, no eval yet
    log = tmp_path / "killed" / "log.jsonl"
    evaluation = next(r for r in records(tmp_path / "straight" / "log.jsonl") if "eval_top1" in r)
    with log.open("a") as f:                                            # the eval a killed process wrote last
        f.write(json.dumps(evaluation) + "\n")
    run(tmp_path / "killed", *args, "--resume")
    logs = [[{k: v for k, v in r.items() if k != "img_per_s"} for r in records(tmp_path / name / "log.jsonl")
             if "param_checksum" not in r] for name in ("straight", "killed")]
    assert logs[0] == logs[1] and sum("eval_top1" in r and r["step"] == 2 for r in logs[1]) == 1


def test_validation_images_are_never_trained_on():
    # Fashion-MNIST: the last N training images validate and leave training
    val, train_size = validation_indices("fashion_mnist", 5000, 60_000)
    assert (val.start, val.stop, train_size) == (55_000, 60_000, 55_000)
    assert validation_indices("fashion_mnist", 5000, 1000)[1] == 1000          # a smaller --train-size stays
    with pytest.raises(ValueError, match="--val-size"):
        validation_indices("fashion_mnist", 60_000, 60_000)
    # generated sets: generator indices far beyond any epoch's range
    val, train_size = validation_indices("scenes", 2000, 64_000)
    assert (val.start, len(val), train_size) == (VAL_OFFSET, 2000, 64_000)


def test_per_epoch_evaluation_on_validation_images(tmp_path):
    summary = run(tmp_path / "val", "--epochs", "1", "--train-size", "64", "--val-size", "48",
                  "--export", str(tmp_path / "val_model"))
    assert [(h["eval_split"], h["eval_images"]) for h in summary["eval_history"]] == [("validation", 48)]
    card = json.loads((tmp_path / "val_model.json").read_text())
    assert card["data"]["sizes"]["validation"] == 48 and card["train_eval"]["eval_split"] == "validation"
    with pytest.raises(ValueError, match="would reach the validation images"):
        run(tmp_path / "far", "--epochs", "1", "--train-size", str(VAL_OFFSET), "--fresh-each-epoch",
            "--val-size", "8", "--batch-size", str(VAL_OFFSET))


def test_existing_checkpoint_needs_resume(tmp_path):
    run(tmp_path, "--epochs", "1", "--train-size", "32")
    with pytest.raises(FileExistsError):
        run(tmp_path, "--epochs", "1", "--train-size", "32")


def test_augment_translation_is_an_exact_padded_crop():
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    recipe = dict(AUGMENT["fashion_mnist"], hflip=False)
    out = augment(x, 28, recipe, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    for img, src in zip(out, padded):     # every output is one of the 81 integer crops of the zero-padded image
        assert min((img - src[:, dy:dy + 28, dx:dx + 28]).abs().max().item()
                   for dy in range(9) for dx in range(9)) < 1e-5
    same = augment(x, 28, dict(recipe, translate=0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x.float() / 255, atol=1e-5, rtol=0)


def test_iso_flops_gives_mone_more_steps():
    assert iso_flops_factor(timm.create_model("dense_vit_tiny_patch4_32")) == 1.0
    factor = iso_flops_factor(timm.create_model("mone_vit_tiny_patch4_32"))
    assert 1.3 < factor < 3.0


def test_nested_widths_trains_a_matvit_every_token_on_one_drawn_expert(tmp_path):
    summary = run(tmp_path / "run", "--nested-widths", "--epochs", "2", "--train-size", "128", "--log-every", "1",
                  "--iso-flops-of", "dense", "--export", str(tmp_path / "matvit"))
    model = summary["model"]
    torch.manual_seed(0)                                                     # the run's seed: the same init
    init = timm.create_model("mone_vit_tiny_patch4_32", num_classes=4, drop_path_rate=0.1)
    torch.testing.assert_close(model.router.weight, init.router.weight)      # no routing to learn: router frozen
    assert all(block.alpha.item() == 0.0 for block in model.blocks)         # (alpha·r + 1) = 1: plain nested ViT
    assert not torch.equal(model.blocks[0].mlp.fc1.weight, init.blocks[0].mlp.fc1.weight)  # the rest trained
    steps = [r for r in records(tmp_path / "run" / "log.jsonl") if "loss" in r]
    assert {r["e_c"] for r in steps} <= set(mone.width_fractions(4)) and len({r["e_c"] for r in steps}) > 1
    # isoFLOPs: the mean width costs less than dense, so the MatViT gets more steps, by the MACs ratio
    factor = iso_flops_factor(model, nested_widths=True)
    widths = [mone.count_macs(model, capacities=mone.single_expert_capacities(j)) for j in range(4)]
    assert factor == pytest.approx(mone.dense_macs(model) / (sum(widths) / 4))
    assert summary["total_steps"] == round(2 * 4 * factor)
    card = json.loads((tmp_path / "matvit.json").read_text())
    assert card["config"]["nested_widths"] is True
    assert set(card["train_eval"]["eval_top1"]) == {"width=0.125", "width=0.25", "width=0.5", "width=1"}
    assert card["macs_per_image"]["width=1"] == mone.count_macs(model, 1.0)
    with pytest.raises(ValueError, match="needs a mone_"):
        train(parse_args([*TINY, "--model", "dense_vit_tiny_patch4_32", "--nested-widths",
                          "--out-dir", str(tmp_path / "dense")]))


def test_mask_router_loss_hand_worked():
    # 4x4 mask, 2x2 patches with object fractions 1, 0.5 | 0.25, 0: targets 1, 1, 0, 0 (>= 50 % object pixels)
    pixels = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)[None]
    ln3 = torch.log(torch.tensor(3.0))
    two_experts = torch.stack([torch.zeros(4), torch.stack([ln3, ln3, -ln3, ln3])], -1)[None]   # r_E = .75 .75 .25 .75
    expected = (3 * -torch.log(torch.tensor(0.75)) - torch.log(torch.tensor(0.25))) / 4
    torch.testing.assert_close(mask_router_loss(two_experts, pixels, 2), expected)
    # E = 3: the largest expert's logit is set against the log-sum-exp of the others: r_E = 2 / (1 + 1 + 2) = 0.5
    three_experts = torch.tensor([0.0, 0.0, torch.log(torch.tensor(2.0))]).expand(1, 4, 3)
    torch.testing.assert_close(mask_router_loss(three_experts, pixels, 2), torch.log(torch.tensor(2.0)))
    # cascade, r = .25 .25 .5: object patches -(ln r_2 + ln r_3) / 2 = 1.5 ln 2, background -ln r_1 = 2 ln 2
    torch.testing.assert_close(mask_router_loss(three_experts, pixels, 2, "cascade"),
                               7 / 4 * torch.log(torch.tensor(2.0)))
    # with two experts the cascade target is the largest expert's BCE
    torch.testing.assert_close(mask_router_loss(two_experts, pixels, 2, "cascade"), expected)
    with pytest.raises(ValueError, match="one of"):
        mask_router_loss(two_experts, pixels, 2, "smallest")


# a tiny mask-supervised run whose router learns the object patches (synthetic data)
MASK_TRAINING = ("--router-mask-loss", "1", "--epochs", "4", "--train-size", "256", "--lr", "3e-3",
                 "--warmup-epochs", "0.25")


@functools.cache
def held_out_objects() -> tuple[torch.Tensor, torch.Tensor]:
    """64 synthetic test images, standardised (B, C, H, W), and which of their 4x4 patches are object patches (B, N)."""
    images, _, masks = synthetic_items("test", range(64), 32, 0)
    info = dataset_info("synthetic")
    x = standardize(images.float() / 255, torch.tensor(info["mean"]), torch.tensor(info["std"]))
    return x, (patch_object_fraction(masks, 4) >= OBJECT_PATCH).flatten(1)


def object_over_representation(model, e_c: float, expert: int) -> float:
    """Object patches' share among the tokens EPR gives `expert` at e_c, over their share of all patches."""
    x, is_object = held_out_objects()
    with torch.inference_mode():
        assigned = model.forward_routing(x, e_c).assignment == expert                     # (B, N)
    return float((assigned & is_object).sum() / assigned.sum() / is_object.float().mean())


def test_router_mask_loss_teaches_the_router_the_object_patches(tmp_path):
    summary = run(tmp_path / "run", *MASK_TRAINING, "--log-every", "1", "--export", str(tmp_path / "supervised"))
    router = [r["router_loss"] for r in records(tmp_path / "run" / "log.jsonl") if "loss" in r]
    assert len(router) == 32 and sum(router[-4:]) / 4 < sum(router[:4]) / 4 - 0.1
    assert json.loads((tmp_path / "supervised.json").read_text())["config"]["router_mask_loss"] == 1.0
    plain = run(tmp_path / "plain", "--epochs", "1", "--train-size", "64", "--log-every", "1")
    assert "router_loss" not in records(tmp_path / "plain" / "log.jsonl")[0]
    # the supervised router ranks object patches first for the largest expert on images it never trained on
    for model, better in ((summary["model"], True), (plain["model"], False)):
        assert (object_over_representation(model, 0.5, 3) > 2) == better
    for bad, message in ((["--model", "dense_vit_tiny_patch4_32"], "needs a mone_"),
                         (["--nested-widths"], "needs a mone_"), (["--router-mask-loss", "-1"], ">= 0"),
                         (["--router-mask-target", "smallest"], "takes one of")):
        with pytest.raises(ValueError, match=message):
            train(parse_args([*TINY, "--router-mask-loss", "1", *bad, "--out-dir", str(tmp_path / "bad")]))


def test_alpha_floor_holds_every_alpha_through_training_and_is_validated(tmp_path):
    summary = run(tmp_path / "run", "--epochs", "1", "--train-size", "64", "--log-every", "1", "--alpha-floor", "0.4")
    logged = [r["alpha"] for r in records(tmp_path / "run" / "log.jsonl") if "loss" in r]
    assert len(logged) == 2 and all(0.4 - 1e-4 <= a <= ALPHA_MAX + 1e-4 for alphas in logged for a in alphas)
    assert summary["model"].blocks[0].alpha.item() >= 0.4 - 1e-7
    for bad in ("-0.1", "1"):
        with pytest.raises(ValueError, match="--alpha-floor must be in"):
            train(parse_args([*TINY, "--alpha-floor", bad, "--out-dir", str(tmp_path / "bad")]))
    for other in (["--model", "dense_vit_tiny_patch4_32"], ["--nested-widths"]):     # no router alpha to bound
        with pytest.raises(ValueError, match="needs a mone_"):
            train(parse_args([*TINY, "--alpha-floor", "0.5", *other, "--out-dir", str(tmp_path / "bad")]))


def test_cascade_mask_target_puts_objects_first_on_every_expert_but_the_smallest(tmp_path):
    models = {target: run(tmp_path / target, *MASK_TRAINING, "--router-mask-target", target)["model"]
              for target in ("largest", "cascade")}
    # e_c 0.2 gives the largest expert no token (0, 5, 19, 40 of 64, widest first): cascade sends the objects to the
    # D/2 expert, while the largest-only target leaves them to the narrow ones and D/2 gets background (~0.5x here)
    largest_only, cascade = (object_over_representation(models[t], 0.2, 2) for t in ("largest", "cascade"))
    assert largest_only < 1 < 2 < cascade
    # 0.3: 4 + 12 tokens on the two widest experts, ~17 object patches per image; 0.5: the largest expert
    assert min(object_over_representation(models["cascade"], 0.3, 2),
               object_over_representation(models["cascade"], 0.5, 3)) > 2


def test_ddp_two_processes_keep_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mone.train",
           *TINY, "--epochs", "1", "--train-size", "128", "--log-every", "1", "--out-dir", str(out),
           "--export", str(tmp_path / "ddp_card")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "ckpt.json").is_file() and json.loads((out / "ckpt.json").read_text())["world_size"] == 2
    checksums = [r for r in records(out / "log.jsonl") if "param_checksum" in r][-1]["param_checksum"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    card = json.loads((tmp_path / "ddp_card.json").read_text())
    assert card["command"].startswith("torchrun") and card["hardware"]["processes"] == 2


def test_cli_main_prints_a_summary(tmp_path, capsys):
    main([*TINY, "--epochs", "1", "--train-size", "32", "--out-dir", str(tmp_path)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 1
