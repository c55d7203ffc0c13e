"""GVD on 2 CPU ranks (gloo, torchrun): sampling sharded by class gives the 1-rank synset (up to
float rounding), with a shared workdir (rank 0 trains, rank 1 loads) and without one (both train
the same stages)."""
import pytest
import torch

import vdfast

pytest.importorskip("accelerate")

from test_distributed import _launch  # noqa: E402  (the torchrun launcher of the DM tests)

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
    # each rank sampled its own block of classes into its own chunk folder
    (samples,) = (tmp_path / "w2").glob("samples-*")
    assert sorted(p.name for p in samples.iterdir() if p.is_dir()) == ["rank0of2", "rank1of2"]
    # no workdir: every rank trains the same stages itself
    _launch(tmp_path / "nowork", 2, ARGS)
    assert torch.equal(vdfast.load(tmp_path / "nowork" / "synset").pixels, two.pixels)
