"""MoNE Explorer: Mixture of Nested Experts (Jain et al., NeurIPS 2024) on timm, with the routers of Liu et al. 2024."""
from . import vmoe  # noqa: F401  (registers the vmoe_vit_* models)
from .allocators import ALLOCATORS, SPLIT_METHODS, capacity_split, get_allocator
from .capacity import (achieved_capacity, capacity_distribution, expert_dims, min_effective_capacity,
                       single_expert_capacities, tokens_per_expert, validate_effective_capacity,
                       width_fractions)
from .checkpoint import is_matvit, load_model, read_card, save_weights, scenes_version
from .flops import count_macs, dense_macs
from .models import MoNEOutput, MoNEVisionTransformer, TRAIN_CAPACITIES
from .routers import ROUTERS
from .routing import epr_allocate, expert_preferred_routing, random_allocate

__version__ = "0.1.0"
