from .distill_encoder_decoder import PMDistillEncoderDecoder, distill_kl_loss

__all__ = ['PMDistillEncoderDecoder', 'distill_kl_loss']
