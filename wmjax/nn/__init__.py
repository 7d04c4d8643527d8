"""Network building blocks: layers with DreamerV3's init, and DreamerV3's distributions."""
from wmjax.nn.dists import (
    BoundedNormal,
    Categorical,
    TwoHot,
    categorical_kl,
    mode_onehot,
    sample_onehot,
    softmax_xent,
    symexp,
    symlog,
    twohot_bins,
    unimix_logits,
)
from wmjax.nn.layers import (MLP, SAVE_MATMULS, Linear, NormAct, RMSNorm, dreamer_init,
                             shared_dense)

__all__ = [
    "BoundedNormal", "Categorical", "Linear", "MLP", "NormAct", "RMSNorm", "SAVE_MATMULS", "TwoHot",
    "categorical_kl", "dreamer_init", "mode_onehot", "sample_onehot", "shared_dense", "softmax_xent",
    "symexp", "symlog", "twohot_bins", "unimix_logits",
]
