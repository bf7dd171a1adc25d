"""The run's lifecycle around the steps, as in the reference: plateau LR on resume, Lookahead sync, second-order
optimizers, the EMA decay, ``--dist-bn`` of the EMA and the Ctrl-C advice."""
import types

import pytest
import torch
from _engine_helpers import tiny_args

from engine.distributed import init_distributed
from engine.errors import ConfigError
from engine.loop import train_one_epoch
from engine.model import build_model, build_model_ema, prepare_model, resolve_model_args
from engine.optim import build_amp, build_optimizer, build_scheduler


def _model_and_optimizer(args):
    init_distributed(args)
    resolve_model_args(args)
    torch.manual_seed(0)
    model = prepare_model(args, build_model(args))
    return model, build_optimizer(args, model)


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator))
            for _ in range(count)]


@pytest.mark.parametrize("start_epoch, restored, expected_lr", [
    (1, True, 1e-4 + (3e-3 - 1e-4) / 2), (3, True, 3e-4), (3, False, 3e-3)])
def test_a_plateau_schedule_resumed_past_its_warmup_keeps_the_optimizer_lr(tmp_path, start_epoch, restored,
                                                                            expected_lr):
    """timm's plateau scheduler sets the warmup LR when built and, after the warmup, only lowers the LR it finds:
    a run resumed past the warmup trained at the warmup LR to the end.  Now it keeps the restored LR (here lowered
    once to 3e-4), or the base LR with --no-resume-opt; within the warmup, the warmup LR of the epoch."""
    args = tiny_args(tmp_path, "--sched", "plateau", "--warmup-epochs", "2", "--warmup-lr", "1e-4", "--lr", "3e-3",
                     "--epochs", "5")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    if restored:  # as restored from the checkpoint of a run whose LR was lowered once
        optimizer.param_groups[0].update(lr=3e-4, initial_lr=3e-3)
    build_scheduler(args, optimizer, updates_per_epoch=10, start_epoch=start_epoch)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr, rel=1e-12)


@pytest.mark.parametrize("start_batch", [0, 2])
def test_a_lookahead_epoch_ends_on_the_slow_weights(tmp_path, start_batch):
    """timm's train.py calls ``sync_lookahead`` at the end of every epoch, so validation and checkpoints see the
    slow weights (also in an epoch resumed from a recovery checkpoint, whose first batches are skipped).  Seven
    steps with k=6: the fast weights of step 7 differ from the slow ones of step 6."""
    args = tiny_args(tmp_path, "--opt", "lookahead_sgd", "--lr", "0.1", "--weight-decay", "0")
    model, optimizer = _model_and_optimizer(args)
    train_one_epoch(0, model, _batches(7 + start_batch), optimizer, torch.nn.CrossEntropyLoss(), args,
                    amp=build_amp(args), start_batch=start_batch)
    state = optimizer._base_optimizer.state
    synced = [(name, p) for name, p in model.named_parameters() if "lookahead_slow_buff" in state[p]]
    assert synced
    for name, param in synced:
        torch.testing.assert_close(param, state[param]["lookahead_slow_buff"], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("opt", ["adahessian", "lookahead_adahessian"])
def test_second_order_optimizers_are_refused(tmp_path, opt):
    """They differentiate the gradients again (``create_graph``), which the Triton backwards of the model's LIF
    and max-pool ops cannot: the Hessian terms through them would silently be lost."""
    with pytest.raises(ConfigError, match=f"--opt {opt}: second-order optimizers are not supported"):
        _model_and_optimizer(tiny_args(tmp_path, "--opt", opt))


def test_one_ema_update_moves_the_ema_by_one_minus_decay(tmp_path):
    """The reference's ModelEmaV2 decays from the first update; ModelEmaV3 given a step count copies the model in
    its first two updates."""
    args = tiny_args(tmp_path, "--model-ema", "--model-ema-decay", "0.9", "--lr", "1e-2")
    model, optimizer = _model_and_optimizer(args)
    ema = build_model_ema(args, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_one_epoch(0, model, _batches(1), optimizer, torch.nn.CrossEntropyLoss(), args, amp=build_amp(args),
                    model_ema=ema)
    after = model.state_dict()
    assert not torch.equal(after["head.weight"], before["head.weight"])
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * after[name], msg=name)


@pytest.mark.parametrize("dist_bn", ["reduce", "broadcast", ""])
def test_dist_bn_also_distributes_the_ema_before_validating_it(tmp_path, monkeypatch, dist_bn):
    """As the reference: with ``--dist-bn`` the EMA's BatchNorm statistics are reduced (or broadcast) too; without
    it the EMA evaluated is rank 0's, the one saved."""
    import timm.utils

    import engine.run

    calls = []
    monkeypatch.setattr(engine.run, "train_one_epoch", lambda *args, **kwargs: {"loss": 1.0})
    monkeypatch.setattr(engine.run, "validate",
                        lambda model, *args, **kwargs: calls.append(("validate", model)) or {"top1": 1.0})
    monkeypatch.setattr(timm.utils, "distribute_bn",
                        lambda model, world_size, reduce: calls.append(("distribute_bn", model, world_size, reduce)))
    args = tiny_args(tmp_path, "--epochs", "1", "--model-ema", "--dist-bn", dist_bn)
    init_distributed(args)
    args.distributed, args.world_size = True, 2
    model, ema = torch.nn.BatchNorm1d(2), types.SimpleNamespace(module=torch.nn.BatchNorm1d(2))
    setup = engine.run.TrainingSetup(
        model=model, model_ema=ema, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), amp=build_amp(args),
        loaders=types.SimpleNamespace(train=[], eval=[], mixup_fn=None), train_loss_fn=None, eval_loss_fn=None,
        lr_scheduler=types.SimpleNamespace(step=lambda *args: None), num_epochs=1, start_epoch=0, checkpoint=None)
    engine.run._train_epochs(args, setup, None, None)
    reduce = dist_bn == "reduce"
    model_calls = [("distribute_bn", model, 2, reduce)] if dist_bn else []
    assert calls == [*model_calls, ("validate", model), ("distribute_bn", ema.module, 2, reduce),
                     ("validate", ema.module)]


@pytest.mark.parametrize("resumable", [True, False])
def test_ctrl_c_advises_resuming_only_for_a_script_that_resumes(tmp_path, monkeypatch, resumable):
    """finetune.py ignores --resume, so its Ctrl-C message must not advise it; a script that resumes says there is
    nothing to resume from yet (interrupted in its first epoch, without recovery files)."""
    import engine.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.run, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.run.run_training(tiny_args(tmp_path, "--epochs", "1", "--experiment", "run"),
                                hooks=engine.run.RunHooks(resumable=resumable))
    log = (tmp_path / "run" / "train.log").read_text()
    assert ("Interrupted before the first checkpoint of" in log and "start the run again" in log) is resumable
    assert ("this script does not resume (it ignores --resume): run it again to start over" in log) is not resumable


def test_batchnorm_sync_flags_in_one_process_are_warned_about(tmp_path, caplog):
    from _engine_helpers import tiny_args

    from engine.model import build_model, prepare_model, resolve_model_args

    args = tiny_args(tmp_path, "--sync-bn", "--dist-bn", "reduce")
    args.distributed = False  # as engine.distributed.init_distributed sets it for one process
    resolve_model_args(args)
    prepare_model(args, build_model(args))
    assert "--sync-bn and --dist-bn act between the processes of a distributed run" in caplog.text
