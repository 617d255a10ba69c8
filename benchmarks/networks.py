"""The networks the CPU benchmarks time, in kdjax's registry and as ``torch.nn`` twins:
the students of the R MNIST notebook, the MLP notebook and the CIFAR-10 CNN notebook,
and that notebook's teacher."""

from __future__ import annotations

STUDENTS = {
    # name: (registry model, settings, batch size, training examples) as in the R MNIST
    # notebook, the MLP notebook and the CIFAR-10 CNN notebook.
    "small_conv_net": ("small_conv_net", {}, 128, 60000),
    "mlp_200": ("mlp", {"hidden_sizes": (200, 200)}, 32, 10000),
    "two_conv_net": ("two_conv_net", {}, 128, 50000),
    # The CIFAR-10 CNN notebook's teacher, timed as the students are.
    "four_conv_net": ("four_conv_net", {}, 128, 50000),
}
# The others are MNIST-shaped.
IMAGE_SHAPES = {"two_conv_net": (32, 32, 3), "four_conv_net": (32, 32, 3)}


def torch_model(name):
    import torch.nn as nn

    if name == "two_conv_net":  # the CIFAR-10 CNN notebook's student, as written there
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10),
        )  # fmt: skip
    if name == "four_conv_net":  # the CIFAR-10 CNN notebook's teacher, as written there
        return nn.Sequential(
            nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(2048, 512), nn.ReLU(), nn.Linear(512, 10),
        )  # fmt: skip
    if name == "small_conv_net":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout2d(0.25), nn.Flatten(),
            nn.Linear(3136, 32), nn.ReLU(), nn.Linear(32, 10),
        )  # fmt: skip
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, 10),
    )  # fmt: skip
