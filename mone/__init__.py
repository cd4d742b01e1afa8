"""MoNE Explorer: Mixture of Nested Experts (Jain et al., NeurIPS 2024) on timm, with the routers of Liu et al. 2024."""
from .allocators import ALLOCATORS, get_allocator
from .capacity import (achieved_capacity, capacity_distribution, expert_dims, min_effective_capacity,
                       tokens_per_expert, width_fractions)
from .checkpoint import load_model, read_card, save_weights
from .flops import count_macs, dense_macs
from .models import MoNEOutput, MoNEVisionTransformer, TRAIN_CAPACITIES
from .routing import epr_allocate, expert_preferred_routing, random_allocate

__version__ = "0.1.0"
