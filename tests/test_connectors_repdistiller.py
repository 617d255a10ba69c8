"""RepDistiller's trainable connectors in Flax (``ConvReg``, ``LinearEmbed``,
``Paraphraser``, ``Translator``, ``ABConnectors``, and the existing ``VIDRegressor``)
against small PyTorch modules written here from RepDistiller's ``models/util.py``,
``distiller_zoo/VID.py`` and the AB authors' connector: the Flax parameters are copied
into the PyTorch module and the outputs compared in training and evaluation mode; the
parameter counts and the initial distributions are PyTorch's."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import BatchNorm

from kdjax.models.connectors import ConvReg, LinearEmbed, VIDRegressor
from kdjax.models.repdistiller_connectors import ABConnectors, Paraphraser, Translator

KEY = jax.random.key(0)
ATOL = 1e-5


def _nn():
    return pytest.importorskip("torch").nn


# --- PyTorch references, written from RepDistiller's code (NCHW shapes) ---------------


def torch_conv_reg(s_shape, t_shape, use_relu=True):
    """``models/util.py::ConvReg(s_shape, t_shape, use_relu)``."""
    nn = _nn()
    _, s_c, s_h, s_w = s_shape
    _, t_c, t_h, t_w = t_shape
    if s_h == 2 * t_h:
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif s_h * 2 == t_h:
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    else:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), *([nn.ReLU()] if use_relu else []))


def torch_leaky_stack(widths, use_bn, transpose=False):
    """The encoder (or decoder) of ``Paraphraser``/``Translator``: 3×3, stride 1,
    padding 1, BatchNorm if ``use_bn``, LeakyReLU(0.1); ``widths`` = in, then outs."""
    nn = _nn()
    layer = nn.ConvTranspose2d if transpose else nn.Conv2d
    modules = []
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
        modules.append(layer(c_in, c_out, 3, 1, 1))
        modules += [nn.BatchNorm2d(c_out)] if use_bn else []
        modules.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*modules)


def torch_ab_connector(s_c, t_c):
    """The AB authors' ``build_feature_connector(t_c, s_c)`` with its init."""
    nn = _nn()
    conv, bn = nn.Conv2d(s_c, t_c, 1, 1, 0, bias=False), nn.BatchNorm2d(t_c)
    conv.weight.data.normal_(0, math.sqrt(2.0 / (1 * 1 * t_c)))
    bn.weight.data.fill_(1)
    bn.bias.data.zero_()
    return nn.Sequential(conv, bn)


def torch_vid_regressor(c_in, c_mid, c_out):
    """``distiller_zoo/VID.py::VIDLoss.regressor``."""
    nn = _nn()
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(c_mid, c_mid, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(c_mid, c_out, 1, bias=False),
    )


# --- Copying Flax variables into PyTorch, comparing ---------------------------------


def torch_layers(*modules):
    nn = _nn()
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.Linear)
    return [layer for module in modules for layer in module.modules() if isinstance(layer, kinds)]


def copy_into_torch(variables, names, layers):
    """Flax layers ``names`` → PyTorch ``layers``, in order. Conv kernels are HWIO:
    ``Conv2d`` weights are OIHW, ``ConvTranspose2d`` weights ``[in, out, kh, kw]``."""
    torch, nn = pytest.importorskip("torch"), _nn()
    assert len(names) == len(layers)
    for name, layer in zip(names, layers, strict=True):
        p = {k: np.asarray(v) for k, v in variables["params"][name].items()}
        if isinstance(layer, nn.BatchNorm2d):
            stats = variables["batch_stats"][name]
            values = {"weight": p["scale"], "bias": p["bias"]}
            values |= {"running_mean": stats["mean"], "running_var": stats["var"]}
        elif isinstance(layer, nn.ConvTranspose2d):
            values = {"weight": p["kernel"].transpose(2, 3, 0, 1), "bias": p["bias"]}
        elif isinstance(layer, nn.Conv2d):
            values = {"weight": p["kernel"].transpose(3, 2, 0, 1), "bias": p.get("bias")}
        else:
            values = {"weight": p["kernel"].T, "bias": p["bias"]}
        for key, value in values.items():
            if value is not None:
                getattr(layer, key).data.copy_(torch.tensor(np.asarray(value)))


def random_variables(module, inputs, seed=1, **call):
    """Variables of ``module``'s structure drawn with NumPy (no JAX random programs to
    compile): kernels ``N(0, 1/fan_in)``, biases ``N(0, 0.3²)``, BatchNorm scales
    ``1 + N(0, 0.3²)`` (a swap with the offsets would show), running mean 0, variance 1."""
    shapes = jax.eval_shape(partial(module.init, **call), KEY, *inputs)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("mean", "var"):
            return jnp.full(leaf.shape, float(name == "var"), leaf.dtype)
        std = 1 / math.sqrt(math.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 0.3
        return jnp.asarray(rng.normal(float(name == "scale"), std, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def nchw(x):
    return pytest.importorskip("torch").tensor(np.asarray(x).transpose(0, 3, 1, 2))


def nhwc(tree):
    return jax.tree.map(lambda t: t.detach().numpy().transpose(0, 2, 3, 1), tree)


def count(tree) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def assert_matches_torch(module, inputs, names, modules, forward):
    """Flax ``module`` against the PyTorch ``modules`` run by ``forward(*nchw_inputs)``:
    parameter counts, one training step (outputs and running averages), evaluation."""
    variables = random_variables(module, inputs, train=False)
    layers = torch_layers(*modules)
    torch_params = [p for m in modules for p in m.parameters()]
    assert count(variables["params"]) == sum(p.numel() for p in torch_params)
    copy_into_torch(variables, names, layers)
    torch_inputs = jax.tree.map(nchw, inputs)
    for m in modules:
        m.train()
    train_step = partial(
        module.apply,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda mdl, _: isinstance(mdl, BatchNorm),
    )
    out, updates = train_step(variables, *inputs)
    assert_close(out, nhwc(forward(*torch_inputs)))
    for name, layer in zip(names, layers, strict=True):
        if "bn" not in name:
            continue
        stats = updates["batch_stats"][name]
        np.testing.assert_allclose(stats["mean"], layer.running_mean.numpy(), atol=ATOL)
        # PyTorch's running variance takes the unbiased batch variance, Flax's the
        # biased one: from variance 1, 0.9 + 0.1 · (m/(m − 1)) · biased, m = N·H·W.
        (normalised,) = updates["intermediates"][name]["__call__"]
        m = math.prod(normalised.shape[:-1])
        biased = (np.asarray(stats["var"]) - 0.9) / 0.1
        np.testing.assert_allclose(0.9 + 0.1 * biased * m / (m - 1), layer.running_var, atol=ATOL)
    variables = {**variables, "batch_stats": updates.get("batch_stats", {})}
    copy_into_torch(variables, names, layers)
    for m in modules:
        m.eval()
    out = module.apply(variables, *inputs, train=False)
    assert_close(out, nhwc(forward(*torch_inputs)))


def assert_close(actual, desired):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL), actual, desired)


def normal(shape, seed=2):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --- ConvReg ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student", "teacher", "use_relu"),
    [
        ((3, 8, 8, 4), (4, 4, 6), True),  # H = 2·H_t: 3×3 stride-2 conv
        ((3, 4, 4, 4), (8, 8, 6), True),  # 2·H = H_t: 4×4 stride-2 transposed conv
        ((3, 4, 4, 4), (4, 4, 6), False),  # equal: 1×1 conv (AB's Connector: no ReLU)
        ((3, 8, 10, 4), (5, 6, 6), True),  # smaller: valid 4×5 conv
    ],
)
def test_conv_reg_matches_repdistiller(student, teacher, use_relu):
    reference = torch_conv_reg(
        (3, student[3], *student[1:3]), (3, teacher[2], *teacher[:2]), use_relu
    )
    module = ConvReg(teacher, use_relu=use_relu)
    assert_matches_torch(module, (normal(student),), ["conv", "bn"], [reference], reference)
    out = jax.eval_shape(partial(module.init_with_output, train=False), KEY, normal(student))[0]
    assert out.shape == (student[0], *teacher)


@pytest.mark.parametrize(
    ("student", "teacher", "message"),
    [
        ((2, 4, 4, 8), (16, 16, 32), "got student H×W = 4×4, teacher 16×16"),
        ((2, 8, 4, 8), (6, 6, 32), "got student H×W = 8×4, teacher 6×6"),
        ((2, 8, 6, 8), (4, 4, 32), r"carries the student map \(8, 6\) to \(4, 3\)"),
        ((2, 8, 8), (4, 4, 32), "must be NHWC"),
    ],
)
def test_conv_reg_refuses_shapes_it_cannot_map(student, teacher, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(partial(ConvReg(teacher).init, train=False), KEY, jnp.zeros(student))


# --- Factor transfer ------------------------------------------------------------------


def _factor_names(prefix, use_bn):
    return [f"{prefix}_{kind}{i}" for i in range(3) for kind in ("conv", "bn")[: 1 + use_bn]]


@pytest.mark.parametrize("use_bn", [False, True])
def test_paraphraser_matches_repdistiller(use_bn):
    t_c, width = 8, 4  # k = 0.5
    encoder = torch_leaky_stack((t_c, t_c, width, width), use_bn)
    decoder = torch_leaky_stack((width, width, t_c, t_c), use_bn, transpose=True)
    names = _factor_names("encoder", use_bn) + _factor_names("decoder", use_bn)

    def forward(x):
        factor = encoder(x)
        return factor, decoder(factor)

    module = Paraphraser(k=0.5, use_bn=use_bn)
    assert_matches_torch(module, (normal((3, 4, 4, t_c)),), names, [encoder, decoder], forward)


@pytest.mark.parametrize("use_bn", [True, False])
def test_translator_matches_repdistiller(use_bn):
    s_c, t_c = 6, 8
    encoder = torch_leaky_stack((s_c, s_c, 4, 4), use_bn)
    module = Translator(t_c, k=0.5, use_bn=use_bn)
    names = _factor_names("encoder", use_bn)
    assert_matches_torch(module, (normal((3, 4, 4, s_c)),), names, [encoder], encoder)


def test_factor_transfer_defaults_are_repdistillers():
    assert (Paraphraser().k, Paraphraser().use_bn) == (0.5, False)
    assert (Translator(8).k, Translator(8).use_bn) == (0.5, True)
    init = partial(Paraphraser().init_with_output, train=False)
    factor, reconstruction = jax.eval_shape(init, KEY, jnp.ones((1, 2, 2, 6)))[0]
    assert factor.shape == (1, 2, 2, 3) and reconstruction.shape == (1, 2, 2, 6)
    with pytest.raises(ValueError, match="must be >= 1 channel"):
        jax.eval_shape(partial(Translator(1).init, train=False), KEY, jnp.ones((1, 2, 2, 3)))


# --- Activation boundaries ------------------------------------------------------------


def test_ab_connectors_match_the_authors_connector():
    shapes = [(3, 4, 4, 5), (3, 2, 2, 7)]
    teacher_channels = (6, 9)
    references = [
        torch_ab_connector(s[-1], t) for s, t in zip(shapes, teacher_channels, strict=True)
    ]

    def forward(*maps):
        return [reference(x) for reference, x in zip(references, maps, strict=True)]

    inputs = tuple(normal(shape, seed=i) for i, shape in enumerate(shapes))
    module = ABConnectors(teacher_channels)
    assert_matches_torch(
        module, (list(inputs),), ["conv0", "bn0", "conv1", "bn1"], references, lambda m: forward(*m)
    )
    with pytest.raises(ValueError, match="2 stages, got 1 student maps"):
        jax.eval_shape(partial(module.init, train=False), KEY, [inputs[0]])


# --- LinearEmbed and VIDRegressor -----------------------------------------------------


def test_linear_embed_matches_repdistiller():
    torch, nn = pytest.importorskip("torch"), _nn()
    vectors = normal((4, 12))
    module = LinearEmbed(dim=5)
    variables = random_variables(module, (vectors,))
    linear = nn.Linear(12, 5)
    assert count(variables) == sum(p.numel() for p in linear.parameters())
    copy_into_torch(variables, ["linear"], [linear])
    want = linear(torch.tensor(np.asarray(vectors))).detach().numpy()
    np.testing.assert_allclose(module.apply(variables, vectors), want, atol=ATOL)
    # A map flattens in NHWC order: PyTorch's NCHW flatten with the weight's rows permuted.
    maps = normal((4, 2, 3, 2))
    variables = random_variables(module, (maps,))
    kernel = np.asarray(variables["params"]["linear"]["kernel"])
    linear = nn.Linear(12, 5)
    linear.weight.data.copy_(
        torch.tensor(kernel.reshape(2, 3, 2, 5).transpose(3, 2, 0, 1).reshape(5, 12))
    )
    linear.bias.data.copy_(torch.tensor(np.asarray(variables["params"]["linear"]["bias"])))
    want = linear(nchw(maps).reshape(4, -1)).detach().numpy()
    np.testing.assert_allclose(module.apply(variables, maps), want, atol=ATOL)


def test_vid_regressor_matches_repdistillers_vid_loss():
    torch = pytest.importorskip("torch")
    s_c, t_c = 5, 7
    x = normal((2, 3, 3, s_c))
    module = VIDRegressor(t_c)  # RepDistiller: VIDLoss(s_c, t_c, t_c)
    variables = random_variables(module, (x,))
    reference = torch_vid_regressor(s_c, t_c, t_c)
    # log_scale is VIDLoss's own parameter beside the regressor's.
    assert count(variables) == sum(p.numel() for p in reference.parameters()) + t_c
    for index, layer in enumerate(torch_layers(reference)):
        kernel = np.asarray(variables["params"][f"conv{index}"])
        layer.weight.data.copy_(torch.tensor(kernel.T[:, :, None, None]))
    mean, _ = module.apply(variables, x)
    np.testing.assert_allclose(mean, nhwc(reference(nchw(x))), atol=ATOL)


# --- Initial distributions ------------------------------------------------------------


def uniform_std(fan_in: int) -> float:
    """Std of PyTorch's default ``U(±1/sqrt(fan_in))``."""
    return 1.0 / math.sqrt(3.0 * fan_in)


def assert_std(values, want, rel=0.03):
    assert np.std(np.asarray(values)) == pytest.approx(want, rel=rel)


def test_initial_distributions_are_pytorchs():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    s_c, t_c = 64, 128
    # Conv2d: fan_in = in·kh·kw.
    variables = ConvReg((1, 1, t_c)).init(KEY, jnp.ones((1, 2, 2, s_c)), train=False)
    reference = torch_conv_reg((1, s_c, 2, 2), (1, t_c, 1, 1))
    assert_std(variables["params"]["conv"]["kernel"], uniform_std(s_c * 9))
    assert_std(variables["params"]["conv"]["kernel"], reference[0].weight.detach().std().item())
    assert np.abs(variables["params"]["conv"]["bias"]).max() <= 1 / math.sqrt(s_c * 9)
    # ConvTranspose2d (also the paraphraser's decoder): PyTorch's fan_in = out·kh·kw
    # (its weight's second axis).
    variables = ConvReg((2, 2, t_c)).init(KEY, jnp.ones((1, 1, 1, s_c)), train=False)
    reference = torch_conv_reg((1, s_c, 1, 1), (1, t_c, 2, 2))
    assert_std(variables["params"]["conv"]["kernel"], uniform_std(t_c * 16))
    assert_std(variables["params"]["conv"]["kernel"], reference[0].weight.detach().std().item())
    bias = np.abs(variables["params"]["conv"]["bias"])
    assert 0.8 / math.sqrt(t_c * 16) < bias.max() <= 1 / math.sqrt(t_c * 16)
    # BatchNorm: scale 1, offset 0, running mean 0, variance 1.
    bn = {**variables["params"]["bn"], **variables["batch_stats"]["bn"]}
    assert [float(np.unique(bn[k])[0]) for k in ("scale", "bias", "mean", "var")] == [1, 0, 0, 1]
    # AB: N(0, 2 / out) (not uniform: 68% within one std).
    kernel = ABConnectors((256,)).init(KEY, [jnp.ones((1, 1, 1, s_c))], train=False)
    kernel = np.asarray(kernel["params"]["conv0"]["kernel"])
    assert_std(kernel, math.sqrt(2 / 256))
    assert_std(kernel, torch_ab_connector(s_c, 256)[0].weight.detach().std().item())
    assert np.mean(np.abs(kernel) < np.std(kernel)) == pytest.approx(0.683, abs=0.015)
    # Linear (LinearEmbed) and VID's bias-free 1×1 convolutions: fan_in = in.
    params = LinearEmbed(128).init(KEY, jnp.ones((1, 256)))["params"]
    assert_std(params["linear"]["kernel"], uniform_std(256))
    params = VIDRegressor(256).init(KEY, jnp.ones((1, 256)))["params"]
    assert_std(params["conv1"], uniform_std(256))
    assert_std(params["conv1"], torch_vid_regressor(256, 256, 256)[2].weight.detach().std().item())
    # VID's log_scale: VIDLoss's log(exp(init_pred_var − eps) − 1), init_pred_var 5.
    want = np.float32(np.log(np.exp(5.0 - 1e-5) - 1.0))
    np.testing.assert_allclose(params["log_scale"], np.full(256, want), rtol=1e-6)


def test_gradients_reach_every_parameter():
    student, teacher = normal((2, 4, 4, 3)), normal((2, 8, 8, 6), seed=3)
    modules = {"reg": ConvReg((8, 8, 6)), "para": Paraphraser(), "ab": ABConnectors((6,))}
    inputs = {"reg": (student,), "para": (teacher,), "ab": ([teacher[..., :3]],)}
    variables = {k: random_variables(m, inputs[k], train=False) for k, m in modules.items()}

    def objective(params):
        total = 0.0
        for key, module in modules.items():
            out, _ = module.apply(
                {**variables[key], "params": params[key]},
                *inputs[key],
                train=True,
                mutable=["batch_stats"],
            )
            total += sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(out))
        return total

    grads = jax.jit(jax.grad(objective))({k: v["params"] for k, v in variables.items()})
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), path
