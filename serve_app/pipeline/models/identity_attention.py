"""Attention processors that gate IP-Adapter identity attention per sample, so both sampler branches
(identity-free and identity) and both classifier-free-guidance halves run in one batched UNet call.

The gate travels in ``cross_attention_kwargs["identity_gate"]`` as a tensor of shape [batch]. It must not be
called ``scale``: the UNet pops that name as the LoRA scale. Every processor declares the name, because
``Attention.forward`` drops (with a warning) keyword arguments its processor does not declare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

IDENTITY_GATE = "identity_gate"


class GatedSelfAttnProcessor(AttnProcessor2_0):
    """The stock processor, accepting (and ignoring) the identity gate meant for cross-attention."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        identity_gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class GatedIPAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    """Decoupled cross-attention whose identity term is multiplied by ``identity_gate[b]`` for sample b.

    ``identity_gate=None`` skips the identity term entirely (no identity anywhere in the batch); a gate of all
    ones equals the stock processor at the same ``scale``.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        identity_gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text_states, ip_states = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text_states.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            text_states = attn.norm_encoder_hidden_states(text_states)

        query = _heads(attn, attn.to_q(hidden_states))
        hidden_states = _attend(attn, query, attn.to_k(text_states), attn.to_v(text_states), attention_mask)
        if identity_gate is not None:
            gate = identity_gate.to(hidden_states.dtype)[:, None, None]
            for tokens, scale, to_k_ip, to_v_ip in zip(ip_states, self.scale, self.to_k_ip, self.to_v_ip):
                tokens = tokens.reshape(batch, -1, tokens.shape[-1])
                identity = _attend(attn, query, to_k_ip(tokens), to_v_ip(tokens), None)
                hidden_states = hidden_states + (scale * gate) * identity

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _heads(attn: Attention, states: torch.Tensor) -> torch.Tensor:
    batch = states.shape[0]
    return states.view(batch, -1, attn.heads, states.shape[-1] // attn.heads).transpose(1, 2)


def _attend(
    attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    out = F.scaled_dot_product_attention(query, _heads(attn, key), _heads(attn, value), attn_mask=mask)
    return out.transpose(1, 2).reshape(query.shape[0], -1, attn.heads * query.shape[-1]).to(query.dtype)


def install_gated_processors(unet: UNet2DConditionModel) -> None:
    """Swap the processors that ``load_ip_adapter`` installed for gated ones, keeping their weights."""
    processors = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            gated = GatedIPAdapterAttnProcessor(
                processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, processor.scale
            ).to(device=processor.to_k_ip[0].weight.device, dtype=processor.to_k_ip[0].weight.dtype)
            gated.load_state_dict(processor.state_dict())
            processors[name] = gated
        else:
            processors[name] = GatedSelfAttnProcessor()
    unet.set_attn_processor(processors)
