"""Training hooks: the interface fairness methods plug into, and one module per method."""
from .base import (PhaseBatch, TrainingHook, cli_options, create_hooks, get_hook_class, list_hooks,
                   parse_methods, register_hook)

__all__ = ['PhaseBatch', 'TrainingHook', 'cli_options', 'create_hooks', 'get_hook_class', 'list_hooks',
           'parse_methods', 'register_hook']
