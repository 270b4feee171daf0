"""The fitting's float64 copy of a model lives as long as the model does."""

import gc

from fitting.model_arrays import _ARRAYS, model_arrays
from morph3d.model.registry import load_model


def test_model_arrays_are_cached_per_model_and_freed_with_it():
    model = load_model("default")
    arrays = model_arrays(model)
    assert model_arrays(model) is arrays
    assert any(key is model for key in _ARRAYS.keys())
    before = len(_ARRAYS)
    del model, arrays
    gc.collect()
    # a batch worker loads a model per job: its arrays must not outlive it
    assert len(_ARRAYS) == before - 1
