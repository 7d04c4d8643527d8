"""World models: the RSSM and its encoder/decoder."""
from wmjax.models.heads import ImageDecoder, ImageEncoder, VectorDecoder, VectorEncoder
from wmjax.models.rssm import RSSM, RSSMState, kl_loss

__all__ = ["ImageDecoder", "ImageEncoder", "RSSM", "RSSMState", "VectorDecoder", "VectorEncoder", "kl_loss"]
