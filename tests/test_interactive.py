"""The interactive model's parts: clicks from requests, guidance through resampling, kept clicked cells,
the warm start from the automatic weights, DeepEdit's click simulation for several channels, batching of
guidance, and click refinement that recomputes only around a new click."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.apps.deepedit.transforms import AddGuidanceSignalDeepEditd
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.engines import SupervisedTrainer
from monai.inferers import SimpleInferer

from tokenseg.clicks import ClickError, parse_clicks
from tokenseg.inferers import GUIDANCE_TOLERANCE, ClickRefinementInferer
from tokenseg.interaction import ClickInteraction
from tokenseg.networks import TokenSeg
from tokenseg.networks.click_cells import clicked_cells
from tokenseg.networks.interactive import load_automatic_weights
from tokenseg.transforms import SerializeGuidanced

from conftest import tiny_tokenseg

REPO = Path(__file__).resolve().parents[1]
LABELS = {"lesion": 1, "background": 0}
SHAPE = (40, 30, 20)


# --- clicks as MONAI Label's clients send them -----------------------------------------------------------------

def test_clicks_per_label_and_deepgrow_forms_agree():
    per_label = parse_clicks({"lesion": [[1, 2, 3]], "background": [[4.4, 5, 6]], "label": "lesion"}, LABELS, SHAPE)
    deepgrow = parse_clicks({"foreground": [[1, 2, 3]], "background": [[4, 5, 6]]}, LABELS, SHAPE)
    assert per_label == deepgrow == {"lesion": [[1, 2, 3]], "background": [[4, 5, 6]]}
    assert parse_clicks({"model": "x", "image": "a", "background": []}, LABELS, SHAPE) == {"lesion": [], "background": []}
    # /info lists bundle labels in lower case; a task's label may not be
    assert parse_clicks({"tumour": [[0, 0, 0]]}, {"Tumour": 1, "background": 0}, SHAPE)["Tumour"] == [[0, 0, 0]]


@pytest.mark.parametrize("request_params,message", [
    ({"lesion": [[40, 2, 3]]}, "outside the image"),
    ({"lesion": [[-1, 2, 3]]}, "outside the image"),
    ({"lesion": [[1, 2]]}, "is not a point"),
    ({"lesion": [[1, "a", 3]]}, "is not a point"),
    ({"lesion": [[1, float("nan"), 3]]}, "is not a point"),
    ({"lesion": [[True, 2, 3]]}, "is not a point"),
    ({"lesion": [1, 2, 3]}, "is not a point"),
    ({"lesion": "1,2,3"}, "must be a list"),
    ({"liver": [[1, 2, 3]]}, "'liver', which does not exist"),
    ({"label": "liver", "foreground": [[1, 2, 3]]}, "label 'liver' does not exist"),
])
def test_bad_clicks_are_named(request_params, message):
    with pytest.raises(ClickError, match=message):
        parse_clicks(request_params, LABELS, SHAPE)


def test_foreground_clicks_need_a_label_when_there_are_several():
    labels = {"background": 0, "mass": 1, "cyst": 2}
    with pytest.raises(ClickError, match="need a 'label'"):
        parse_clicks({"foreground": [[1, 2, 3]]}, labels, SHAPE)
    assert parse_clicks({"foreground": [[1, 2, 3]], "label": "cyst"}, labels, SHAPE)["cyst"] == [[1, 2, 3]]


def _interactive_parser(bundle: Path = REPO / "bundle") -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "inference_deepedit.json")])
    parser["device"] = "$torch.device('cpu')"
    return parser


def test_a_click_lands_on_its_voxel_after_reorientation_and_resampling(tmp_path):
    """The bundle's interactive preprocessing on a real file stored LPS at 0.75 x 0.75 x 6 mm: the guidance
    peak lands where the clicked (bright) voxel lands after Orientationd (RAS) and Spacingd (1.5 x 1.5 x 3)."""
    volume = np.zeros((64, 48, 12, 3), np.float32)
    click = (50, 9, 7)
    volume[click[0] - 1:click[0] + 2, click[1] - 1:click[1] + 2, click[2]] = 100.0  # a bright 3x3 patch in one slice
    affine = np.diag([-0.75, -0.75, 6.0, 1.0])
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    parser = _interactive_parser()
    data = parser.get_parsed_content("preprocessing")({"image": str(path), "lesion": [list(click)], "background": []})
    image = data["image"]
    assert image.shape[0] == 3 + 2  # three phases, then one guidance channel per label (lesion, background)
    lesion_guidance, background_guidance = image[3], image[4]
    assert float(background_guidance.abs().max()) == 0.0
    peak = np.unravel_index(int(lesion_guidance.argmax()), lesion_guidance.shape)
    bright = np.unravel_index(int(image[0].argmax()), image[0].shape)
    assert np.abs(np.subtract(peak, bright)).max() <= 1, (peak, bright)


# --- the network: clicked cells are kept ------------------------------------------------------------------------

def _guidance_input(size=(64, 64, 32), channels=1, guidance=2, clicks=((3, 4, 5), (60, 40, 30))):
    x = torch.randn(1, channels + guidance, *size)
    x[:, channels:] = 0
    for point in clicks:
        x[(0, channels, *point)] = 1.0
    return x


def test_every_cell_under_a_click_is_kept_at_every_level():
    net = tiny_tokenseg(in_channels=3, img_size=(64, 64, 32), guidance_channels=2, num_kept_tokens=20).eval()
    x = _guidance_input()
    marked = clicked_cells(x[:, 1:], net.grids)
    assert int(marked.sum()) == 2 * len(net.grids)  # one cell per click per level
    with torch.no_grad():
        out = net.forward_tokens(x)
    assert bool((out.keep_mask[marked > 0] == 1).all())
    assert int(out.keep_mask.sum()) == net.num_kept_tokens
    unforced = tiny_tokenseg(in_channels=3, img_size=(64, 64, 32), guidance_channels=2, num_kept_tokens=20,
                             keep_clicked_cells=False)
    unforced.load_state_dict(net.state_dict())
    with torch.no_grad():
        free = unforced.eval().forward_tokens(x)
    assert not bool((free.keep_mask[marked > 0] == 1).all())  # left to the scores, the clicked cells are not all kept


def test_interactive_network_scripts_traces_and_trains():
    net = tiny_tokenseg(in_channels=3, img_size=(64, 64, 32), guidance_channels=2).eval()
    x = _guidance_input()
    with torch.no_grad():
        eager = net(x)
        assert torch.allclose(torch.jit.script(net)(x), eager, atol=1e-5)
    net.train()
    out = net(x)
    out["logits"].mean().backward()
    assert net.encoder[0][0].conv.weight.grad[:, 1:].abs().sum() > 0  # the guidance channels are learned from


def test_guidance_channels_must_leave_image_channels():
    with pytest.raises(ValueError, match="guidance_channels"):
        tiny_tokenseg(in_channels=2, guidance_channels=2)


def test_interactive_model_starts_as_the_automatic_one():
    """The shipped automatic weights in the interactive network: with no clicks, the same logits."""
    automatic = TokenSeg(in_channels=3, out_channels=2, img_size=(64, 64, 32)).eval()
    state = torch.load(REPO / "bundle" / "models" / "model.pt", weights_only=True)
    automatic.load_state_dict(state)
    interactive = TokenSeg(in_channels=5, out_channels=2, img_size=(64, 64, 32), guidance_channels=2).eval()
    loaded = load_automatic_weights(interactive, REPO / "bundle" / "models" / "model.pt")
    assert set(loaded) == set(interactive.state_dict())
    x = torch.randn(1, 3, 64, 64, 32)
    with torch.no_grad():
        assert torch.allclose(automatic(x), interactive(torch.cat([x, torch.zeros(1, 2, 64, 64, 32)], 1)), atol=1e-5)


# --- training: click simulation and batching --------------------------------------------------------------------

class _RecordingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(5, 2, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.conv(x)


def test_training_without_clicks_zeroes_exactly_the_guidance_channels():
    """MONAI's Interaction zeroes every channel after the first, of sample 0 only; ClickInteraction zeroes the
    guidance channels of every sample and leaves all image phases."""
    net = _RecordingNet()
    image = torch.rand(2, 5, 8, 8, 8) + 1.0
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[{"image": image, "label": torch.zeros(2, 1, 8, 8, 8)}],
        network=net, optimizer=torch.optim.SGD(net.parameters(), 0.0), loss_function=lambda p, t: p.mean(),
        inferer=SimpleInferer(),
        iteration_update=ClickInteraction(0.0, [], train=True, number_intensity_ch=3, label_names=LABELS),
    )
    trainer.run()
    seen = net.seen[-1]
    assert torch.equal(seen[:, :3], image[:, :3])
    assert float(seen[:, 3:].abs().max()) == 0.0


def test_guidance_of_different_click_counts_batches():
    samples = [{"guidance": {"lesion": [[0, 1, 2, 3]], "background": []}},
               {"guidance": {"lesion": [[0, 2, 2, 2], [np.int32(2), 12, 12, 12]], "background": "[[0, 1, 1, 1]]"}}]
    serialize = SerializeGuidanced("guidance")
    batch = list_data_collate([serialize(s) for s in samples])
    assert batch["guidance"]["lesion"] == ["[[0, 1, 2, 3]]", "[[0, 2, 2, 2], [2, 12, 12, 12]]"]
    # MONAI's guidance signal reads the serialised points back
    image = np.zeros((1, 16, 16, 16), np.float32)
    signal = AddGuidanceSignalDeepEditd("image", number_intensity_ch=1)(
        {"image": image, "guidance": serialize(samples[1])["guidance"]}
    )["image"]
    assert signal.shape == (3, 16, 16, 16)
    assert signal[1, 2, 2, 2] == signal[1, 12, 12, 12] == signal[1].max() > 0 and signal[2, 1, 1, 1] == 1


# --- inference: only the clicked region is recomputed ------------------------------------------------------------

class _CountingNet(torch.nn.Module):
    """A network whose every output voxel depends on its own guidance: a click changes only its neighbourhood."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return torch.stack([x[:, 0] - x[:, 1:].sum(1), x[:, 1] - x[:, 2]], 1)


def test_click_refinement_recomputes_only_around_the_new_click():
    image = np.random.RandomState(0).rand(1, 96, 96, 48).astype(np.float32)

    def inputs(clicks):
        data = AddGuidanceSignalDeepEditd("image", number_intensity_ch=1)({"image": image, "guidance": clicks})
        return torch.as_tensor(data["image"])[None]

    net = _CountingNet()
    inferer = ClickRefinementInferer((64, 64, 32), guidance_channels=2, sw_batch_size=1, overlap=0.5)
    first = inferer(inputs({"lesion": [[20, 20, 10]], "background": []}), net)
    full_windows = net.calls
    assert inferer.last_region is None and full_windows == 8
    second_input = inputs({"lesion": [[20, 20, 10], [80, 70, 40]], "background": []})
    second = inferer(second_input, net)
    assert net.calls - full_windows == 1  # one patch around the new click, not eight
    region = inferer.last_region
    assert [s.stop - s.start for s in region] == [64, 64, 32]
    assert all(s.start <= p < s.stop for s, p in zip(region, (80, 70, 40)))
    outside = torch.ones(96, 96, 48, dtype=torch.bool)
    outside[region] = False
    assert torch.equal(second[0][:, outside], first[0][:, outside])
    full = ClickRefinementInferer((64, 64, 32), guidance_channels=2, sw_batch_size=1, overlap=0.5)(second_input, net)
    # this network is local: refinement equals a full pass but for the click's far tails, left out by design
    assert float((second - full).abs().max()) <= GUIDANCE_TOLERANCE
    calls = net.calls
    assert torch.equal(inferer(second_input, net), second) and net.calls == calls  # the same clicks again: cached
    other_image = second_input.clone()
    other_image[:, 0] += 1
    inferer(other_image, net)
    assert inferer.last_region is None  # another image: a full pass


class _ShiftedNet(_CountingNet):
    """``_CountingNet`` plus a learnable shift of its lesion logit: new weights change every voxel."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = super().forward(x)
        return torch.stack([out[:, 0], out[:, 1] + self.shift], 1)


def test_click_refinement_after_a_checkpoint_reload_uses_only_the_new_weights():
    image = np.random.RandomState(1).rand(1, 96, 96, 48).astype(np.float32)

    def inputs(clicks):
        data = AddGuidanceSignalDeepEditd("image", number_intensity_ch=1)({"image": image, "guidance": clicks})
        return torch.as_tensor(data["image"])[None]

    first_clicks = inputs({"lesion": [[20, 20, 10]], "background": []})
    second_clicks = inputs({"lesion": [[20, 20, 10], [80, 70, 40]], "background": []})
    retrained = {"shift": torch.tensor(5.0)}

    def full_pass(network):
        return ClickRefinementInferer((64, 64, 32), guidance_channels=2, sw_batch_size=1)(second_clicks, network)

    # weights loaded in place (the same object, so the same id): the next click is a full pass with the new weights
    net = _ShiftedNet()
    inferer = ClickRefinementInferer((64, 64, 32), guidance_channels=2, sw_batch_size=1)
    with torch.no_grad():
        inferer(first_clicks, net)
        net.load_state_dict(retrained)
        refined = inferer(second_clicks, net)
        assert inferer.last_region is None
        assert torch.equal(refined, full_pass(net))
        # and the click after that is refined again, from the new weights' logits
        third = inputs({"lesion": [[20, 20, 10], [80, 70, 40], [30, 75, 20]], "background": []})
        inferer(third, net)
        assert inferer.last_region is not None

    # MONAI Label's reload: a new network with the new weights, the old one freed
    old = _ShiftedNet()
    inferer = ClickRefinementInferer((64, 64, 32), guidance_channels=2, sw_batch_size=1)
    with torch.no_grad():
        inferer(first_clicks, old)
        del old
        new = _ShiftedNet()
        new.load_state_dict(retrained)
        refined = inferer(second_clicks, new)
        assert inferer.last_region is None and torch.equal(refined, full_pass(new))


@pytest.mark.parametrize("num_kept_tokens", [100, (20, 44, 20, 16)])
def test_thirty_clicks_keep_every_clicked_cell_past_k(num_kept_tokens):
    net = tiny_tokenseg(in_channels=3, img_size=(64, 64, 32), guidance_channels=2,
                        num_kept_tokens=num_kept_tokens).eval()
    rng = np.random.RandomState(0)
    # clicks on cell corners (every 8 voxels: the first level's cells here), as an annotator's clicks often fall
    corners = [[x, y, z] for x in range(8, 64, 8) for y in range(8, 64, 8) for z in range(8, 32, 8)]
    clicks = [corners[i] for i in rng.choice(len(corners), 30, replace=False)]
    image = rng.rand(1, 64, 64, 32).astype(np.float32)
    guided = AddGuidanceSignalDeepEditd("image", number_intensity_ch=1)(
        {"image": image, "guidance": {"lesion": clicks[:20], "background": clicks[20:]}}
    )  # DeepEdit's guidance: a click near a cell border marks the cells on both sides
    x = torch.as_tensor(guided["image"])[None]
    marked = clicked_cells(x[:, 1:], net.grids)
    assert int(marked.sum()) > net.num_kept_tokens  # 30 clicks mark more cells than K = 100
    with torch.no_grad():
        out = net.forward_tokens(x)
        scripted = torch.jit.script(net).forward_tokens(x)
    level_sizes = [g[0] * g[1] * g[2] for g in net.grids]
    # K grew to hold them: K = 100 to the clicked cells, or each level's K_l to its clicked cells
    grown = [int(marked.sum())] if net.kept_per_level == [] else [
        max(k, int(m.sum())) for k, m in zip(net.kept_per_level, marked.split(level_sizes, dim=1))]
    for result in (out, scripted):
        assert bool((result.keep_mask[marked > 0] == 1).all())  # every clicked cell kept
        assert result.kept_indices.shape[1] == sum(grown)
    few = _guidance_input()  # two clicks: K stays as trained
    with torch.no_grad():
        assert net.forward_tokens(few).kept_indices.shape[1] == net.num_kept_tokens
