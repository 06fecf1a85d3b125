"""Factored class labels (``class_factors``): a label read as mixed-radix digits, embedded as a sum of one table per
factor (the moving digits' 80 classes as digit x 8 + direction)."""
from __future__ import annotations

import pytest
import torch

from ditlab.errors import ModelError
from ditlab.models import create_model, model_from_config
from ditlab.models.layers import LabelEmbedder


def test_embedding_is_the_sum_of_the_factor_rows_closed_form():
    emb = LabelEmbedder(80, 16, (10, 8))
    tables = [t.weight for t in emb.factor_tables]
    y = torch.arange(81)
    out = emb(y)
    for label in range(80):
        digit, direction = divmod(label, 8)
        torch.testing.assert_close(out[label], tables[0][digit] + tables[1][direction], rtol=0, atol=0)
    torch.testing.assert_close(out[80], tables[0][10] + tables[1][8], rtol=0, atol=0)  # the null label: null rows


def test_three_factors_read_mixed_radix_last_fastest():
    emb = LabelEmbedder(24, 8, (2, 3, 4))
    tables = [t.weight for t in emb.factor_tables]
    label = 1 * 12 + 2 * 4 + 3  # digits (1, 2, 3)
    torch.testing.assert_close(emb(torch.tensor([label]))[0], tables[0][1] + tables[1][2] + tables[2][3])


def test_a_step_on_one_label_trains_only_its_factor_rows():
    emb = LabelEmbedder(80, 16, (10, 8))
    emb(torch.tensor([3 * 8 + 5])).sum().backward()
    digit_grad = emb.factor_tables[0].weight.grad.abs().sum(dim=1)
    direction_grad = emb.factor_tables[1].weight.grad.abs().sum(dim=1)
    assert digit_grad.nonzero().flatten().tolist() == [3]
    assert direction_grad.nonzero().flatten().tolist() == [5]


def test_model_with_factors_round_trips_and_plain_models_keep_their_layout():
    model = create_model("DiT-S/2", input_size=8, num_classes=80, class_factors=(10, 8), depth=1, hidden_size=64,
                         num_heads=2)
    d = model.config.to_dict()
    assert d["class_factors"] == [10, 8]
    rebuilt = model_from_config(d)
    rebuilt.load_state_dict(model.state_dict())
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 79, 80])
    torch.testing.assert_close(rebuilt(x, t, y=y), model(x, t, y=y))
    plain = create_model("DiT-S/2", input_size=8, num_classes=10, depth=1, hidden_size=64, num_heads=2)
    assert "class_factors" not in plain.config.to_dict()
    assert "y_embedder.embedding_table.weight" in plain.state_dict()


def test_video_model_null_label_is_the_unconditional_branch():
    model = create_model("DiT-S/2", input_size=8, num_classes=80, class_factors=(10, 8), depth=1, hidden_size=64,
                         num_heads=2, num_frames=4)
    torch.nn.init.normal_(model.final_layer.linear.weight)  # adaLN-Zero starts at zero output: make it depend on y
    for block in [*model.blocks, *model.temporal_blocks]:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    x, t = torch.randn(2, 4, 4, 8, 8), torch.rand(2)
    null = model(x, t, y=torch.full((2,), 80))
    torch.testing.assert_close(model(x, t, y=None), null)
    assert not torch.allclose(model(x, t, y=torch.tensor([3, 44])), null)


@pytest.mark.parametrize("factors", [(10, 7), (80,), (1, 80), (2, 0, 40)])
def test_factors_that_do_not_describe_the_classes_are_refused(factors):
    with pytest.raises(ModelError, match="whose product is num_classes"):
        create_model("DiT-S/2", input_size=8, num_classes=80, class_factors=factors, depth=1)


def test_factored_models_are_not_exported_to_layouts_with_one_label_table():
    from ditlab.interop import to_diffusers
    from ditlab.interop.official import to_official

    model = create_model("DiT-S/2", input_size=8, num_classes=80, class_factors=(10, 8), depth=1, hidden_size=64,
                         num_heads=2)
    with pytest.raises(ModelError, match="label table"):
        to_official(model)
    with pytest.raises(ModelError, match="factored class labels"):
        to_diffusers(model)
