"""Training paradigms. Each exposes `loss_fn(model, params, batch, rng, *, step, **options)
-> (loss, metrics)`, with its options taken from `config.forcing`."""

from videoar.forcing import (bidirectional, diffusion_forcing, ode_regression, resampling,
                             teacher)

PARADIGMS = {
    "teacher_forcing": teacher.loss_fn,
    "diffusion_forcing": diffusion_forcing.loss_fn,
    "bidirectional": bidirectional.loss_fn,
    "resampling": resampling.loss_fn,
    "ode_regression": ode_regression.loss_fn,
}
