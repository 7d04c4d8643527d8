"""World models: the RSSM and its encoder/decoder."""
from wmjax.models.heads import VectorDecoder, VectorEncoder
from wmjax.models.rssm import RSSM, RSSMState, kl_loss

__all__ = ["RSSM", "RSSMState", "VectorDecoder", "VectorEncoder", "kl_loss"]
