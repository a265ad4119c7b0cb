"""``sort_by_key`` as a differentiable torch function (imported only for torch callers)."""

import torch

from . import sort


class _SortByKey(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keys, values):
        perm = sort.argsort(keys.detach())
        ctx.save_for_backward(perm)
        ctx.mark_non_differentiable(perm)
        return sort._gathered(keys.detach(), perm), sort._gathered(values.detach(), perm), perm

    @staticmethod
    def backward(ctx, grad_keys, grad_values, _grad_perm):
        (perm,) = ctx.saved_tensors
        gk = sort.scatter(grad_keys.contiguous(), perm) if ctx.needs_input_grad[0] else None
        gv = sort.scatter(grad_values.contiguous(), perm) if ctx.needs_input_grad[1] else None
        return gk, gv


def sort_by_key(keys, values):
    return _SortByKey.apply(keys, values)
