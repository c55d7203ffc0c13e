"""GVD on 2 CPU ranks (gloo, torchrun): the autoencoder and the generator trained data-parallel
equal the 1-rank ones (up to float rounding), and sampling sharded by class gives the 1-rank
synset, with a shared workdir (rank 0 computes latents, modes and teacher, rank 1 loads them) and
without one (both compute them)."""
import pytest
import torch
from safetensors.torch import load_file

import vdfast

pytestmark = pytest.mark.slow  # real multi-process runs (2 gloo ranks)

from test_distributed import _launch, launch_script  # noqa: E402  (the torchrun launchers)

ARGS = ["--method", "gvd", "--ipc", "2", "--net-width", "4", "--no-evaluate", "--no-preview",
        "--gvd-ae-width", "4", "--gvd-ae-steps", "4", "--gvd-ae-batch", "4", "--gvd-gen-steps", "3",
        "--gvd-gen-batch", "4", "--gvd-steps", "3", "--gvd-train-timesteps", "20",
        "--gvd-teacher-epochs", "1", "--gvd-kmeans-iters", "3", "--gvd-chunk", "5"]


def test_two_ranks_give_the_one_rank_generated_synset(tmp_path):
    _launch(tmp_path / "one", 1, ARGS + ["--gvd-workdir", str(tmp_path / "w1")])
    out = _launch(tmp_path / "two", 2, ARGS + ["--gvd-workdir", str(tmp_path / "w2")])
    assert "on 2 process(es)" in out and out.count("distilled gvd") == 1
    one, two = vdfast.load(tmp_path / "one" / "synset"), vdfast.load(tmp_path / "two" / "synset")
    # the same videos up to float rounding (other batch compositions and process settings): the
    # stages are identical, the decoded pixels differ by at most one quantisation level
    assert torch.equal(two.labels, one.labels)
    diff = (two.pixels.int() - one.pixels.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.01
    torch.testing.assert_close(two.soft_labels, one.soft_labels, rtol=0, atol=2e-3)
    # data-parallel training (each rank its half of every batch): the same stage keys, weights
    # equal but for float summation order, which Adam turns into steps of up to lr on
    # parameters whose gradient is ~0 (the exact gradient is tested below)
    for stage, f, lr in (("ae", "ae_final.safetensors", 1e-3), ("gen", "gen_final.safetensors", 1e-3)):
        (a,), (b,) = (list(w.glob(f"{stage}-*/{f}")) for w in (tmp_path / "w1", tmp_path / "w2"))
        assert a.parent.name == b.parent.name
        wa, wb = load_file(str(a)), load_file(str(b))
        diff = torch.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in wa])
        assert diff.max() <= 2 * lr * 4 and (diff > 1e-5).float().mean() < 0.05, (stage, diff.max())
    # each rank sampled its own block of classes into its own chunk folder
    (samples,) = (tmp_path / "w2").glob("samples-*")
    assert sorted(p.name for p in samples.iterdir() if p.is_dir()) == ["rank0of2", "rank1of2"]
    # no workdir: every rank trains the same stages itself
    _launch(tmp_path / "nowork", 2, ARGS)
    assert torch.equal(vdfast.load(tmp_path / "nowork" / "synset").pixels, two.pixels)


GRAD = """
import sys, torch
from vdfast.config import GVDConfig
from vdfast.distributed import setup
from vdfast.methods.gvd import _share, build_generator, generator_batch_loss
from vdfast.methods.gvd_sample import noise_schedule
dist = setup(torch.device("cpu"))
g = GVDConfig(generator="tiny", gen_batch=6, train_timesteps=50, min_snr=5.0, prediction="v")
torch.manual_seed(0)
x = torch.randn(10, 4, 4, 8, 8)
y = torch.arange(10) % 3
net = build_generator(g, ["a", "b", "c"], 4, (4, 8, 8))
with torch.no_grad():  # leave adaLN-zero's start so every parameter gets a gradient
    for p in net.parameters():
        p.add_(0.05 * torch.randn(p.shape))
params = list(net.parameters())
model = dist.data_parallel(net)  # DistributedDataParallel on 2 ranks, summing the gradients
assert isinstance(model, torch.nn.parallel.DistributedDataParallel) == dist.active
loss = generator_batch_loss(model, x, y, noise_schedule("linear", 50).float(), g,
                            torch.Generator().manual_seed(1), _share(dist, g.gen_batch, "gen_batch"))
loss.backward()
if dist.main:
    torch.save(torch.cat([p.grad.flatten() for p in params]).double(), sys.argv[1])
if dist.active:  # leave together: a rank exiting under a live gloo group can abort
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
"""


def test_data_parallel_gradient_equals_the_one_process_gradient(tmp_path):
    """The generator's batch split over 2 gloo ranks (3 rows each), through the DDP wrapper of
    Dist.data_parallel: the summed gradient is the 1-process gradient of the whole batch (DDP's
    default averaging would give half of it)."""
    script = tmp_path / "grad.py"
    script.write_text(GRAD)
    for n in (1, 2):
        launch_script(script, n, tmp_path / f"g{n}.pt")
    g1, g2 = torch.load(tmp_path / "g1.pt"), torch.load(tmp_path / "g2.pt")
    assert g1.abs().max() > 0 and (g1 != 0).float().mean() > 0.9
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-7)


RESUME = """
import dataclasses, sys, torch
from pathlib import Path
from safetensors.torch import load_file
from vdfast.config import GVDConfig
from vdfast.data.store import ClipStore
from vdfast.distributed import setup
from vdfast.methods.gvd import train_autoencoder, train_generator
dist = setup(torch.device("cpu"))
root = Path(sys.argv[1])
store = ClipStore.builtin(train_per_class=2, test_per_class=1, frames=4, size=16)
lat = {lab: torch.randn(5, 4, 4, 4, 4, generator=torch.Generator().manual_seed(i)).half()
       for i, lab in enumerate("abc")}
g = GVDConfig(generator="tiny", ae_width=4, ae_steps=4, ae_batch=4, gen_steps=4, gen_batch=4,
              train_timesteps=20, steps=3, checkpoint_every=1)
half = dataclasses.replace(g, ae_steps=2, gen_steps=2)  # warm-up 1 step, constant lr: 2 + 2 = 4


def both(cfg, name):
    ae = train_autoencoder(store, cfg, 0, "cpu", root / name / "ae", progress=False, dist=dist)
    gen = train_generator(lat, cfg, 0, "cpu", root / name / "gen", progress=False, dist=dist)
    return ae.state_dict(), gen.state_dict()


straight = both(g, "straight")
both(half, "part")  # stopped after 2 of 4 steps: remove the finished stages' weights, resume
dist.barrier()
if dist.main:
    (root / "part" / "ae" / "ae_final.safetensors").unlink()
    (root / "part" / "gen" / "gen_final.safetensors").unlink()
dist.barrier()
resumed = both(g, "part")
for a, b in zip(straight, resumed):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume differs"
if dist.main:  # the files hold the plain modules' state dicts (no DDP "module." prefix)
    for f, sd in (("ae/ae_final.safetensors", straight[0]), ("gen/gen_final.safetensors", straight[1])):
        saved = load_file(str(root / "part" / f))
        assert saved.keys() == sd.keys() and all(torch.equal(saved[k], sd[k]) for k in sd), f
if dist.active:
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
"""


def test_two_rank_stages_resume_from_their_checkpoints(tmp_path):
    """The autoencoder and the generator trained data-parallel on 2 ranks (DDP) for 2 of 4 steps,
    then resumed from their step checkpoints, end where 4 uninterrupted steps end (the weights, the
    generator's EMA, the optimiser and the data RNG restored into the plain modules before they
    are wrapped), and the cached weights are the plain modules' state dicts."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    launch_script(script, 2, tmp_path / "runs", timeout=240)
