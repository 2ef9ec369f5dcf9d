"""Self Forcing: a few-step causal generator trained on its own autoregressive rollouts with a
video-level distribution-matching loss (spec: the reference code guandeh17/Self-Forcing at
33593df3e81f; README, "Self Forcing").

- The training rollout is the streaming sampler itself (sampling.Sampler, solver "few_step"): the
  warped few-step list, chunk by chunk over the KV cache, x0 re-noised with fresh noise between
  steps, the cache rewritten from the detached chunk at t = 0. One exit step s per rollout,
  uniform on {0..K-1} and shared by every chunk and video; only each chunk's forward at t_s
  carries gradient (spec 1.3-1.9).
- Scores: the frozen bidirectional teacher with classifier-free guidance (the "real" score) and
  the critic (the "fake" score, same architecture, conditional only), each over the whole video
  with the full mask and one t per video, as forcing/bidirectional.py trains the teacher
  (spec 2.1-2.3). Their unconditional branch is the model's null conditioning.
- Generator losses: DMD (spec 2.4) or SiD (spec 3); the critic: flow matching on fresh rollouts
  (spec 2.5). `generator_loss` and `critic_loss` are what a generator/critic train step calls.
- The GAN variant (spec 4, loss="gan"): the critic is a discriminator, the critic's CausalDiT
  plus a classification head (models/discriminator.py) with parameters {"backbone", "head"}.
  Both the rollout ("fake") and the batch's clips ("real", below) are noised at one score time
  per video (drawn like DMD's); the generator minimises the non-saturating logistic loss
  w_G mean softplus(-D(fake)), no DMD term, no teacher; the critic update trains backbone and
  head on w_D [mean softplus(-D(real)) + mean softplus(D(fake))] + (R1 + R2) / 2, which replaces
  the flow-matching loss (the backbone's velocity output is not used), real and fake sharing the
  noise. R1 and R2 are finite differences of D at the noised real and fake videos (spec 4.4),
  off by default.
  "Real" is batch["video"]: the clips of the run's data source. The spec's are teacher samples
  (the clean endpoints of its ODE-pair data, spec 4.5); here the Self Forcing stage reads the
  world's clips, the distribution the teacher itself was trained on, so the generator is judged
  against the data rather than against the teacher's imperfect samples. A run on the ODE pairs'
  shards (videoar/ode_pairs.py: their "video" is the teacher's clean endpoint) would be the
  spec's choice with the same code.

Losses are float32 (the reference computes DMD in float64).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from videoar import sampling
from videoar.attention import masks
from videoar.diffusion import flow
from videoar.forcing import common
from videoar.models import discriminator, dit

LOSSES = ("dmd", "sid", "gan")
# The GAN variant's keys (Options), read by no other loss.
GAN_KEYS = ("gan_weights", "r1_weight", "r2_weight", "discriminator_taps")
# sigma of the finite differences that stand for R1/R2's input gradient (spec 4.4).
PENALTY_SIGMA = 0.01


@dataclasses.dataclass(frozen=True)
class Options:
  """Self Forcing's settings; the defaults are the reference's (spec 0.2).

  num_frames, frame_shape: the rolled-out video's length F and frame (H, W, C).
  chunk: frames generated together; F must be whole chunks.
  num_steps: K, the length of the few-step list.
  warp_shift: the shift that warps the uniform list 1 - k/K (spec 1.2).
  real_guidance: g in x0_real = cond + g (cond - uncond) (spec 2.3); the usual
    uncond + w (cond - uncond) has w = g + 1 (the reference's g = 3 is w = 4).
  score_shift, score_clamp: the score networks' timesteps (spec 2.2, flow.sample_score_time);
    the GAN variant noises real and fake videos at such times too (spec 4.2).
  loss: the generator's loss, "dmd", "sid" or "gan".
  gan_weights: (w_G, w_D) of the GAN losses (spec 4.3). The reference's are 0.01 each; under Adam
    a constant factor on the only loss of an update leaves the update as it is (up to Adam's eps
    and the clipping), so 1 each here: the logged losses are the plain logistic ones (log 2 and
    2 log 2 at chance), and r1_weight, r2_weight weigh R1, R2 against that.
  r1_weight, r2_weight: lambda_1, lambda_2 of R1 (at real videos) and R2 (at fake ones), the
    finite-difference gradient penalties (spec 4.4); 0 (the reference's default) is off.
  discriminator_taps: the blocks (0-indexed, increasing) after which the discriminator head reads
    the backbone's tokens; the reference's 13, 21, 29 of 30 blocks are about 45 %, 70 % and the
    end of its depth, blocks 1, 2, 3 of this project's 4.

  Raises ValueError for an unknown loss, a video that is not whole chunks, or GAN settings out of
  range.
  """

  num_frames: int
  frame_shape: tuple[int, int, int]
  chunk: int
  num_steps: int = 4
  warp_shift: float = 5.0
  real_guidance: float = 3.0
  score_shift: float = 5.0
  score_clamp: tuple[float, float] = (0.02, 0.98)
  loss: str = "dmd"
  gan_weights: tuple[float, float] = (1.0, 1.0)
  r1_weight: float = 0.0
  r2_weight: float = 0.0
  discriminator_taps: tuple[int, ...] = (1, 2, 3)

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"self forcing loss={self.loss!r} is unknown; allowed: {', '.join(LOSSES)}")
    if self.num_frames % self.chunk:
      raise ValueError(f"self forcing num_frames={self.num_frames} is not a multiple of"
                       f" chunk={self.chunk}")
    taps = tuple(self.discriminator_taps)
    if not taps or any(not isinstance(i, int) or i < 0 for i in taps) or list(taps) != sorted(
        set(taps)):
      raise ValueError(f"self forcing discriminator_taps={taps} must be increasing block"
                       " indices >= 0")
    if len(self.gan_weights) != 2 or not all(w > 0 for w in self.gan_weights):
      raise ValueError(f"self forcing gan_weights={self.gan_weights} must be (w_G, w_D) > 0")
    if not (self.r1_weight >= 0 and self.r2_weight >= 0):
      raise ValueError(f"self forcing r1_weight={self.r1_weight}, r2_weight={self.r2_weight}"
                       " must be >= 0")


# --- the rollout -------------------------------------------------------------------------------

def make_sampler(student: dit.CausalDiT, options: Options) -> sampling.Sampler:
  """The generator's few-step sampler; its cache holds the whole rollout (spec 1.10: training
  never evicts), unguided (the few-step student has guidance distilled into it)."""
  return sampling.Sampler(student, frame_shape=options.frame_shape, chunk=options.chunk,
                          window=options.num_frames, solver="few_step")


def step_times(options: Options) -> jax.Array:
  """[K + 1]: the warped few-step list, then 0 (flow.step_times)."""
  return flow.step_times(options.num_steps, options.warp_shift)


def draw_exit_step(rng: jax.Array, num_steps: int) -> jax.Array:
  """int32 []: the rollout's exit step, uniform on {0..K-1} (spec 1.3). One scalar from a key
  that every device holds, so all chunks, videos and devices share it without a broadcast."""
  return jax.random.randint(rng, (), 0, num_steps)


def rollout(student: dit.CausalDiT, params, z_bfhwc, cond: dict, renoise_rng: jax.Array,
            exit_step, options: Options) -> jax.Array:
  """The generator's video [B, F, H, W, C]: every chunk's x0 prediction at step `exit_step`,
  from its start noise in z_bfhwc [B, F, H, W, C]; the same values as the sampler's few-step
  rollout over the list cut to [t_0 .. t_s, 0], with the same noise (spec 1.10). Chunk i
  re-noises after step k with normal(fold_in(fold_in(renoise_rng, i), k)). Gradient reaches
  `params` only through each chunk's exit forward (spec 1.5)."""
  sampler = make_sampler(student, options)
  b = z_bfhwc.shape[0]
  times = jnp.broadcast_to(step_times(options), (b, options.num_steps + 1))
  video, _ = sampler.rollout(params, sampler.init_cache(b), z_bfhwc, times, cond,
                             renoise_rng, exit_step)
  return video


def training_rollout(student: dit.CausalDiT, params, z_bfhwc, cond: dict, rng: jax.Array,
                     options: Options) -> tuple[jax.Array, jax.Array]:
  """(video [B, F, H, W, C], exit step s []): `rollout` with s = draw_exit_step and the
  re-noising keyed by `rng` (split into the two)."""
  exit_rng, renoise_rng = jax.random.split(rng)
  exit_step = draw_exit_step(exit_rng, options.num_steps)
  return rollout(student, params, z_bfhwc, cond, renoise_rng, exit_step, options), exit_step


# --- scores ------------------------------------------------------------------------------------

def _velocity(model: dit.CausalDiT, params, x_t_bfhwc, t_b, cond: dict):
  """A bidirectional model on whole videos: full mask, one t per video [B] (spec 2.1)."""
  b, n = x_t_bfhwc.shape[:2]
  t_bf = jnp.broadcast_to(t_b[:, None], (b, n))
  v, _ = model.apply(params, x_t_bfhwc, t_bf, frame_pos_f=jnp.arange(n, dtype=jnp.int32),
                     mask=masks.Full(n), **cond)
  return v, t_bf


def fake_score(critic: dit.CausalDiT, params, x_t_bfhwc, t_b, cond: dict) -> jax.Array:
  """The critic's x0 prediction [B, F, H, W, C] of x_t at t_b [B], conditional only."""
  v, t_bf = _velocity(critic, params, x_t_bfhwc, t_b, cond)
  return sampling.data_prediction(critic, v, x_t_bfhwc, t_bf)


def real_score(teacher: dit.CausalDiT, params, x_t_bfhwc, t_b, cond: dict,
               guidance: float) -> jax.Array:
  """The teacher's guided x0 prediction cond + g (cond - uncond) [B, F, H, W, C] (spec 2.3);
  the unconditional branch is the null conditioning, both in one doubled batch. Unguided for a
  model without conditioning."""
  if not cond:
    return fake_score(teacher, params, x_t_bfhwc, t_b, cond)
  x_t = jnp.concatenate([x_t_bfhwc, x_t_bfhwc])
  x0_cond, x0_null = jnp.split(fake_score(teacher, params, x_t, jnp.concatenate([t_b, t_b]),
                                          teacher.with_null_conditioning(cond)), 2)
  return x0_cond + guidance * (x0_cond - x0_null)


# --- losses ------------------------------------------------------------------------------------

def _per_sample_mean_abs(a_bfhwc) -> jax.Array:
  """mean |a| over (F, H, W, C) of each video, [B, 1, 1, 1, 1]."""
  return jnp.mean(jnp.abs(a_bfhwc), axis=tuple(range(1, a_bfhwc.ndim)), keepdims=True)


def dmd_generator_loss(x_bfhwc, x0_real, x0_fake) -> tuple[jax.Array, dict]:
  """DMD (spec 2.4): g = nan_to_num((x0_fake - x0_real) / n_b) with n_b = mean |x - x0_real| of
  each video, all constants; L = 0.5 mean((x - sg(x - g))^2), whose gradient in x is
  g / x.size. Returns (L, {"dmd_gradient_norm": mean |g|})."""
  x, x0_real, x0_fake = jax.lax.stop_gradient((x_bfhwc, x0_real, x0_fake))
  g = jnp.nan_to_num((x0_fake - x0_real) / _per_sample_mean_abs(x - x0_real))
  loss = 0.5 * jnp.mean(jnp.square(x_bfhwc - jax.lax.stop_gradient(x_bfhwc - g)))
  return loss, {"dmd_gradient_norm": jnp.mean(jnp.abs(g))}


def sid_generator_loss(x_bfhwc, x0_real, x0_fake) -> tuple[jax.Array, dict]:
  """SiD with alpha = 1 (spec 3): L = mean(nan_to_num((r - f) (f - x) / n_b)), r = x0_real,
  f = x0_fake, n_b = mean |x - r| of each video (a constant). Not detached: the gradient reaches
  x directly and, when r and f were computed from x_t of x, through both scores' inputs."""
  norm = jax.lax.stop_gradient(_per_sample_mean_abs(x_bfhwc - x0_real))
  loss = jnp.mean(jnp.nan_to_num((x0_real - x0_fake) * (x0_fake - x_bfhwc) / norm))
  return loss, {"sid_score_gap": jnp.mean(jnp.abs(x0_real - x0_fake))}


# --- the GAN variant (spec 4) ------------------------------------------------------------------

def discriminate(critic: dit.CausalDiT, params, x_t_bfhwc, t_b, cond: dict,
                 taps: tuple[int, ...]) -> jax.Array:
  """The discriminator's logits [B] (float32) of noised whole videos x_t at t_b [B]: the critic
  backbone run as a score network (full mask, one t per video, conditional only), its tokens
  after the blocks `taps` read by the head. params: {"backbone", "head"}."""
  b, n = x_t_bfhwc.shape[:2]
  t_bf = jnp.broadcast_to(t_b[:, None], (b, n))
  return discriminator.logits(critic, params, x_t_bfhwc, t_bf, taps=taps,
                              frame_pos_f=jnp.arange(n, dtype=jnp.int32), mask=masks.Full(n),
                              **cond)


def gan_generator_loss(fake_logits, weight: float) -> jax.Array:
  """The non-saturating generator loss w_G mean softplus(-D(fake)) (spec 4.3)."""
  return weight * jnp.mean(jax.nn.softplus(-fake_logits))


def gan_discriminator_loss(real_logits, fake_logits, weight: float) -> jax.Array:
  """The logistic discriminator loss w_D [mean softplus(-D(real)) + mean softplus(D(fake))]
  (spec 4.3)."""
  return weight * (jnp.mean(jax.nn.softplus(-real_logits))
                   + jnp.mean(jax.nn.softplus(fake_logits)))


def finite_difference_penalty(logits, perturbed_logits, sigma: float = PENALTY_SIGMA):
  """mean(((D(x + sigma zeta) - D(x)) / sigma)^2) from the logits D(x) and D(x + sigma zeta),
  zeta ~ N(0, I): over zeta its expectation is ||grad_x D||^2 up to O(sigma), R1's (at real x)
  and R2's (at fake x) gradient penalty without a second derivative (spec 4.4). Both logits
  carry gradient."""
  return jnp.mean(jnp.square((perturbed_logits - logits) / sigma))


def _repeat_batch(tree, n: int):
  """Each array of `tree` n times along its batch axis."""
  return jax.tree.map(lambda a: jnp.concatenate([a] * n), tree)


def _gan_generator_loss(student: dit.CausalDiT, gen_params, critic: dit.CausalDiT,
                        critic_params, batch: dict, rng: jax.Array,
                        options: Options) -> tuple[jax.Array, dict]:
  """generator_loss for loss="gan": the rollout (with gradient) noised at the score time and
  judged by the discriminator, the critic's parameters constants. Only the fake branch: the
  non-saturating loss reads no real video (the reference's freshly noised real sample serves its
  relativistic option, not implemented here)."""
  b = batch["video"].shape[0]
  z, rollout_rng, t_b, eps = _noise_and_times(rng, b, options)
  video, exit_step = training_rollout(student, gen_params, z, student.conditioning(batch),
                                      rollout_rng, options)
  critic_params = jax.lax.stop_gradient(critic_params)
  x_t = flow.interpolate(video, eps, jnp.broadcast_to(t_b[:, None], video.shape[:2]))
  logits = discriminate(critic, critic_params, x_t, t_b, critic.conditioning(batch),
                        options.discriminator_taps)
  loss = gan_generator_loss(logits, options.gan_weights[0])
  return loss, {"loss": loss, "exit_step": exit_step, "score_time": jnp.mean(t_b),
                "fake_logit": jnp.mean(logits)}


def discriminator_loss(student: dit.CausalDiT, gen_params, critic: dit.CausalDiT, critic_params,
                       batch: dict, rng: jax.Array, options: Options) -> tuple[jax.Array, dict]:
  """critic_loss for loss="gan" (spec 4.2-4.4): a fresh rollout with its own exit step and no
  gradient (fake) and batch["video"] (real) noised at one score time per video with the same
  noise; L_D + (lambda_1 R1 + lambda_2 R2) / 2, all discriminator evaluations in one batched
  call. Differentiate in `critic_params` ({"backbone", "head"}). Metrics: "critic_loss",
  "critic_exit_step", "real_logit", "fake_logit" (means), "r1", "r2" (weighted, 0 when off)."""
  rng, penalty_rng = jax.random.split(rng)
  b = batch["video"].shape[0]
  z, rollout_rng, t_b, eps = _noise_and_times(rng, b, options)
  video, exit_step = training_rollout(student, jax.lax.stop_gradient(gen_params), z,
                                      student.conditioning(batch), rollout_rng, options)
  t_bf = jnp.broadcast_to(t_b[:, None], video.shape[:2])
  inputs = {"real": flow.interpolate(batch["video"].astype(video.dtype), eps, t_bf),
            "fake": flow.interpolate(jax.lax.stop_gradient(video), eps, t_bf)}
  penalties = {"r1": ("real", options.r1_weight), "r2": ("fake", options.r2_weight)}
  for (name, (at, weight)), key in zip(penalties.items(), jax.random.split(penalty_rng)):
    if weight:
      inputs[name] = inputs[at] + PENALTY_SIGMA * jax.random.normal(key, video.shape)
  n = len(inputs)
  logits = dict(zip(inputs, jnp.split(discriminate(
      critic, critic_params, jnp.concatenate(list(inputs.values())), jnp.tile(t_b, n),
      _repeat_batch(critic.conditioning(batch), n), options.discriminator_taps), n)))
  metrics = {name: (weight * finite_difference_penalty(logits[at], logits[name]) if weight
                    else jnp.zeros(())) for name, (at, weight) in penalties.items()}
  loss = (gan_discriminator_loss(logits["real"], logits["fake"], options.gan_weights[1])
          + 0.5 * (metrics["r1"] + metrics["r2"]))
  return loss, dict(metrics, critic_loss=loss, critic_exit_step=exit_step,
                    real_logit=jnp.mean(logits["real"]), fake_logit=jnp.mean(logits["fake"]))


# --- the train step's losses -------------------------------------------------------------------

def _noise_and_times(rng, batch: int, options: Options):
  """The rollout's start noise z [B, F, H, W, C], its key, and the score time t_b [B] with the
  noise eps for the scores (drawn like z)."""
  noise_rng, rollout_rng, time_rng, eps_rng = jax.random.split(rng, 4)
  shape = (batch, options.num_frames) + tuple(options.frame_shape)
  t_b = flow.sample_score_time(time_rng, (batch,), options.score_shift, options.score_clamp)
  return (jax.random.normal(noise_rng, shape), rollout_rng, t_b,
          jax.random.normal(eps_rng, shape))


def generator_loss(student: dit.CausalDiT, gen_params, teacher: dit.CausalDiT, teacher_params,
                   critic: dit.CausalDiT, critic_params, batch: dict, rng: jax.Array,
                   options: Options) -> tuple[jax.Array, dict]:
  """The generator's loss (options.loss) on a fresh rollout; differentiate in `gen_params`.

  batch: the conditioning entries each model reads (CausalDiT.conditioning) and "video", whose
  leading axis gives the batch size (its frames are not used: Self Forcing is data-free; the GAN
  variant's discriminator reads them in critic_loss). The teacher and critic parameters are
  constants: the critic's gradients from this loss would be discarded (spec 3). Metrics: the
  loss's, "exit_step", "score_time" (mean t). For loss="gan", `critic` is the discriminator's
  backbone and critic_params its {"backbone", "head"}; the teacher is not used.
  """
  if options.loss == "gan":
    return _gan_generator_loss(student, gen_params, critic, critic_params, batch, rng, options)
  b = batch["video"].shape[0]
  z, rollout_rng, t_b, eps = _noise_and_times(rng, b, options)
  video, exit_step = training_rollout(student, gen_params, z, student.conditioning(batch),
                                      rollout_rng, options)
  teacher_params, critic_params = jax.lax.stop_gradient((teacher_params, critic_params))
  # DMD's scores are constants; SiD differentiates through their inputs (spec 3).
  scored = jax.lax.stop_gradient(video) if options.loss == "dmd" else video
  x_t = flow.interpolate(scored, eps, jnp.broadcast_to(t_b[:, None], video.shape[:2]))
  x0_real = real_score(teacher, teacher_params, x_t, t_b, teacher.conditioning(batch),
                       options.real_guidance)
  x0_fake = fake_score(critic, critic_params, x_t, t_b, critic.conditioning(batch))
  loss_fn = {"dmd": dmd_generator_loss, "sid": sid_generator_loss}[options.loss]
  loss, metrics = loss_fn(video, x0_real, x0_fake)
  return loss, dict(metrics, loss=loss, exit_step=exit_step, score_time=jnp.mean(t_b))


def critic_loss(student: dit.CausalDiT, gen_params, critic: dit.CausalDiT, critic_params,
                batch: dict, rng: jax.Array, options: Options) -> tuple[jax.Array, dict]:
  """The critic's flow-matching loss (spec 2.5) on a fresh rollout with its own exit step and no
  gradient to the generator; differentiate in `critic_params`. The critic's velocity output is
  the target's estimate (the reference's (x_t - x0_fake) / t, the same value). `batch` as in
  generator_loss. Metrics: "critic_loss", "critic_exit_step". For loss="gan", the
  discriminator's loss instead (discriminator_loss), the flow-matching loss replaced (spec 4)."""
  if options.loss == "gan":
    return discriminator_loss(student, gen_params, critic, critic_params, batch, rng, options)
  b = batch["video"].shape[0]
  z, rollout_rng, t_b, eps = _noise_and_times(rng, b, options)
  video, exit_step = training_rollout(student, jax.lax.stop_gradient(gen_params), z,
                                      student.conditioning(batch), rollout_rng, options)
  video = jax.lax.stop_gradient(video)
  x_t = flow.interpolate(video, eps, jnp.broadcast_to(t_b[:, None], video.shape[:2]))
  v, _ = _velocity(critic, critic_params, x_t, t_b, critic.conditioning(batch))
  loss = common.mse(v, flow.velocity_target(video, eps))
  return loss, {"critic_loss": loss, "critic_exit_step": exit_step}
