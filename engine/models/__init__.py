"""Modules whose file and attribute names follow the checkpoint key paths.

model.diffusion_model.* -> diffusion_model.py, first_stage_model.* -> first_stage_model.py,
cond_stage_model.* -> cond_stage_model.py, the whole LatentDiffusion wrapper -> latent_diffusion.py.
"""
