"""Training paradigms. Each exposes `loss_fn(model, params, batch, rng, **kwargs) -> (loss, metrics)`."""

from videoar.forcing import bidirectional, diffusion_forcing, teacher

PARADIGMS = {
    "teacher_forcing": teacher.loss_fn,
    "diffusion_forcing": diffusion_forcing.loss_fn,
    "bidirectional": bidirectional.loss_fn,
}
