"""How a video run's training step sees its clips: first as independent images, then as clips.

Open-Sora trains an image model first and extends it to video with zero-initialised temporal blocks. In one
run that is ``image_steps``: for the first N steps every frame of a training clip is an independent image
(``num_images = F``: spatial blocks only; the temporal blocks keep their zero-gated init and get no
gradient), then whole clips. At the switch the model computes exactly the image model it has become, frame
by frame (``ditlab.models.video``), and the temporal blocks start learning motion from there. The phase is
a function of the step, so a resumed run continues it exactly; the loop, the process and the data are the
same in both phases.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class FrameSchedule(nn.Module):
    """The network as the training step calls it: frames as images before step ``image_steps``, clips after.

    Args:
        net: the video model (maybe compiled); its parameters are this module's.
        image_steps: steps trained on frames as images.
        step: returns the number of steps done so far (the run's step counter).
    """

    def __init__(self, net: nn.Module, image_steps: int, step: Callable[[], int]):
        super().__init__()
        self.net = net
        self.image_steps = int(image_steps)
        self._step = step

    def images_now(self, frames: int) -> int:
        """How many of a clip's ``frames`` the current step trains as independent images."""
        return frames if self._step() < self.image_steps else 0

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        return self.net(x, t, num_images=self.images_now(x.shape[2]), **cond)  # x (N, C, F, H, W)
