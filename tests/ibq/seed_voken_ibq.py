"""An independent copy of the official IBQ code (TencentARC/SEED-Voken, src/IBQ: modules/diffusionmodules/
model.py, modules/vqvae/quantize.py, modules/losses/vqperceptual.py, models/ibqgan.py), written here
from that source so the tests compare dcae_ext against it without importing or downloading it.

Kept as the official code computes (names, op order, the epsilons), minus what the tests do not use
(timestep embeddings, remapping, Lightning plumbing, logging). Nothing here imports dcae_ext.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


# --- modules/diffusionmodules/model.py ----------------------------------------------------------

def nonlinearity(x):
    return x * torch.sigmoid(x)


def Normalize(in_channels):
    return torch.nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        x = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(x)


class ResnetBlock(nn.Module):
    def __init__(self, *, in_channels, out_channels=None, dropout=0.0):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = torch.nn.Dropout(dropout)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if self.in_channels != self.out_channels:
            self.nin_shortcut = torch.nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.norm = Normalize(in_channels)
        self.q = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = torch.nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        k = k.reshape(b, c, h * w)
        w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
        w_ = torch.nn.functional.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        h_ = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Encoder(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult=(1, 2, 4, 8), num_res_blocks, attn_resolutions, dropout=0.0,
                 in_channels, resolution, z_channels, **ignore_kwargs):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = torch.nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        curr_res = resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res = curr_res // 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = torch.nn.Conv2d(block_in, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](hs[-1])
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))
        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch, out_ch, ch_mult=(1, 2, 4, 8), num_res_blocks, attn_resolutions, dropout=0.0,
                 in_channels, resolution, z_channels, **ignorekwargs):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = torch.nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res = curr_res * 2
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = torch.nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


# --- modules/vqvae/quantize.py ------------------------------------------------------------------

def compute_entropy_loss(logits, temperature=0.01, sample_minimization_weight=1.0, batch_maximization_weight=1.0,
                         eps=1e-5):
    probs = F.softmax(logits / temperature, -1)
    log_probs = F.log_softmax(logits / temperature + eps, -1)
    avg_probs = probs.mean(dim=0)
    avg_entropy = -torch.sum(avg_probs * torch.log(avg_probs + eps))
    sample_entropy = torch.mean(-torch.sum(probs * log_probs, -1))
    loss = sample_minimization_weight * sample_entropy - batch_maximization_weight * avg_entropy
    return sample_entropy, avg_entropy, loss


class IndexPropagationQuantize(nn.Module):
    def __init__(self, n_e, e_dim, beta=0.25, use_entropy_loss=True, entropy_temperature=0.01):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.use_entropy_loss = use_entropy_loss
        self.entropy_temperature = entropy_temperature
        self.embedding = nn.Embedding(self.n_e, self.e_dim)

    def forward(self, z):
        logits = torch.einsum("b d h w, n d -> b n h w", z, self.embedding.weight)
        soft_one_hot = F.softmax(logits, dim=1)
        ind = soft_one_hot.max(1, keepdim=True)[1]
        hard_one_hot = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(1, ind, 1.0)
        one_hot = hard_one_hot - soft_one_hot.detach() + soft_one_hot
        z_q = torch.einsum("b n h w, n d -> b d h w", one_hot, self.embedding.weight)
        z_q_2 = torch.einsum("b n h w, n d -> b d h w", hard_one_hot, self.embedding.weight)
        quant_loss = torch.mean((z_q - z) ** 2) + torch.mean((z_q_2.detach() - z) ** 2) + self.beta * \
            torch.mean((z_q_2 - z.detach()) ** 2)
        diff = quant_loss
        if self.use_entropy_loss:
            flat = logits.permute(0, 2, 3, 1).reshape(-1, self.n_e)
            diff = (quant_loss, *compute_entropy_loss(flat, temperature=self.entropy_temperature))
        return z_q, diff, (None, None, torch.flatten(ind))


# --- models/ibqgan.py: the generator ------------------------------------------------------------

class IBQ(nn.Module):
    def __init__(self, ddconfig, n_embed, embed_dim, beta=0.25, entropy_temperature=0.01):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = IndexPropagationQuantize(n_embed, embed_dim, beta, True, entropy_temperature)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x):
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x):
        quant, diff, _ = self.encode(x)
        return self.decode(quant), diff

    def get_last_layer(self):
        return self.decoder.conv_out.weight


# --- modules/discriminator/model.py -------------------------------------------------------------

def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc=3, ndf=64, n_layers=3):
        super().__init__()
        norm_layer, use_bias = nn.BatchNorm2d, False
        kw, padw = 4, 1
        sequence = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
            sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw,
                                   bias=use_bias), norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw,
                               bias=use_bias), norm_layer(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*sequence)

    def forward(self, input):
        return self.main(input)


# --- modules/losses/vqperceptual.py -------------------------------------------------------------

def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def _sigmoid_cross_entropy_with_logits(labels, logits):
    zeros = torch.zeros_like(logits, dtype=logits.dtype)
    condition = logits >= zeros
    relu_logits = torch.where(condition, logits, zeros)
    neg_abs_logits = torch.where(condition, -logits, logits)
    return relu_logits - logits * labels + torch.log1p(torch.exp(neg_abs_logits))


def non_saturate_gen_loss(logits_fake):
    B = logits_fake.shape[0]
    logits_fake = torch.mean(logits_fake.reshape(B, -1), dim=-1)
    return torch.mean(_sigmoid_cross_entropy_with_logits(labels=torch.ones_like(logits_fake), logits=logits_fake))


class LeCAM_EMA:
    def __init__(self, init=0.0, decay=0.999):
        self.logits_real_ema = init
        self.logits_fake_ema = init
        self.decay = decay

    def update(self, logits_real, logits_fake):
        self.logits_real_ema = self.logits_real_ema * self.decay + torch.mean(logits_real).item() * (1 - self.decay)
        self.logits_fake_ema = self.logits_fake_ema * self.decay + torch.mean(logits_fake).item() * (1 - self.decay)


def lecam_reg(real_pred, fake_pred, lecam_ema):
    return torch.mean(F.relu(real_pred - lecam_ema.logits_fake_ema).pow(2)) + \
        torch.mean(F.relu(lecam_ema.logits_real_ema - fake_pred).pow(2))


class VQLPIPSWithDiscriminator(nn.Module):
    """The official loss with the perceptual network and the discriminator passed in (the official
    builds LPIPS-VGG from a weights file and an NLayerDiscriminator, as dcae_ext does)."""

    def __init__(self, perceptual, discriminator, disc_start=0, perceptual_weight=1.0, gen_loss_weight=0.1,
                 lecam_loss_weight=0.05, quant_loss_weight=1.0, entropy_loss_weight=0.05, disc_weight=0.4):
        super().__init__()
        self.perceptual_loss = perceptual
        self.discriminator = discriminator
        self.discriminator_iter_start = disc_start
        self.perceptual_weight = perceptual_weight
        self.gen_loss_weight = gen_loss_weight
        self.lecam_loss_weight = lecam_loss_weight
        self.lecam_ema = LeCAM_EMA() if lecam_loss_weight is not None else None
        self.quant_loss_weight = quant_loss_weight
        self.entropy_loss_weight = entropy_loss_weight
        self.discriminator_weight = disc_weight
        self.disc_factor = 1.0

    def calculate_adaptive_weight(self, nll_loss, g_loss, last_layer):
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.discriminator_weight

    def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx, global_step, last_layer=None):
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        nll_loss = rec_loss.clone()
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            nll_loss = nll_loss + self.perceptual_weight * p_loss
        nll_loss = torch.mean(nll_loss)
        disc_factor = self.disc_factor if global_step >= self.discriminator_iter_start else 0.0
        if optimizer_idx == 0:
            logits_fake = self.discriminator(reconstructions.contiguous())
            g_loss = non_saturate_gen_loss(logits_fake)
            if self.gen_loss_weight is None:
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
            else:
                d_weight = torch.tensor(self.gen_loss_weight)
            g_loss = d_weight * disc_factor * g_loss
            quant_loss, sample_entropy, avg_entropy, entropy_loss = codebook_loss
            codebook_loss = self.quant_loss_weight * quant_loss + self.entropy_loss_weight * entropy_loss
            return nll_loss + g_loss + codebook_loss
        logits_real = self.discriminator(inputs.contiguous().detach())
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        if self.lecam_loss_weight is not None and disc_factor > 0:
            self.lecam_ema.update(logits_real, logits_fake)
            lecam_loss = lecam_reg(logits_real, logits_fake, self.lecam_ema)
            return disc_factor * (lecam_loss * self.lecam_loss_weight + hinge_d_loss(logits_real, logits_fake))
        return disc_factor * hinge_d_loss(logits_real, logits_fake)


def training_step(model, loss, opt_gen, opt_disc, x, global_step):
    """ibqgan.VQModel.training_step: discriminator first, then the generator, no clipping."""
    xrec, qloss = model(x)
    discloss = loss(qloss, x, xrec, 1, global_step, last_layer=model.get_last_layer())
    opt_disc.zero_grad()
    discloss.backward()
    opt_disc.step()
    aeloss = loss(qloss, x, xrec, 0, global_step, last_layer=model.get_last_layer())
    opt_gen.zero_grad()
    aeloss.backward()
    opt_gen.step()
    return aeloss.detach(), discloss.detach()


def optimizers(model, loss, lr=1e-4):
    """ibqgan.VQModel.configure_optimizers (scheduler_type "None": constant lr, decayed by the epochs hook)."""
    opt_gen = torch.optim.Adam(list(model.encoder.parameters()) + list(model.decoder.parameters())
                               + list(model.quantize.parameters()) + list(model.quant_conv.parameters())
                               + list(model.post_quant_conv.parameters()), lr=lr, betas=(0.5, 0.9))
    opt_disc = torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
    return opt_gen, opt_disc


# --- the checkpoint a Lightning run writes ------------------------------------------------------

class _RunsCodeWhenUnpickled:
    """A hostile object in the trainer state: unpickling it with plain torch.load runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class AttributeDict(dict):
    """Like Lightning's hyper-parameter container: a dict subclass (pickled with SETITEMS) with attributes."""


class Namespace:
    """Like argparse/jsonargparse namespaces saved with a run: an object rebuilt with BUILD."""

    def __init__(self, **values):
        self.__dict__.update(values)


def lightning_checkpoint(model, path, loss=None, ema_shift=None, hostile_marker=None):
    """Write `model` as SEED-Voken's Lightning ModelCheckpoint would: state_dict with the model keys,
    loss.* keys, LitEma's model_ema.* shadow weights (the weights + `ema_shift`, when given), and
    trainer state around it. `hostile_marker`: a file that appears if the loader runs pickled code."""
    state = dict(model.state_dict())
    if loss is not None:
        state.update({f"loss.{k}": v for k, v in loss.state_dict().items()})
    if ema_shift is not None:
        state["model_ema.decay"] = torch.tensor(0.999)
        state["model_ema.num_updates"] = torch.tensor(-1, dtype=torch.int)
        for name, parameter in model.named_parameters():
            state["model_ema." + name.replace(".", "")] = parameter.detach() + ema_shift
    checkpoint = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "2.2.0", "state_dict": state,
                  "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}},
                  "callbacks": {"ModelCheckpoint{'monitor': 'train/perceptual_loss'}": {
                      "best_model_score": torch.tensor(0.25), "dirpath": "../../checkpoints/vqgan/test"}},
                  "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.9)}]}],
                  "lr_schedulers": [], "math_pi": math.pi,
                  "hyper_parameters": AttributeDict(n_embed=64, ddconfig=Namespace(ch=32, ch_mult=[1, 2])),
                  "hparams_type": [AttributeDict, Namespace]}
    if hostile_marker is not None:
        checkpoint["callbacks"]["Hostile"] = _RunsCodeWhenUnpickled(hostile_marker)
    torch.save(checkpoint, path)
