"""ditlab.sampling: generation. ``Pipeline`` (pipeline.py) owns it; outputs.py writes what it makes;
loading.py builds pipelines from run directories and model folders; many.py makes FID-sized sets."""
from ditlab.sampling.outputs import check_writable, make_grid, save_grid, save_npz, save_png, to_uint8
from ditlab.sampling.pipeline import (
    CANCEL,
    GenerationCancelled,
    Pipeline,
    Samples,
    SamplingDefaults,
    StepInfo,
    check_sampling,
    spread,
)

__all__ = [
    "CANCEL",
    "GenerationCancelled",
    "Pipeline",
    "Samples",
    "SamplingDefaults",
    "StepInfo",
    "check_sampling",
    "check_writable",
    "make_grid",
    "save_grid",
    "save_npz",
    "save_png",
    "spread",
    "to_uint8",
]
