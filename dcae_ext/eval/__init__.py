"""Reconstruction quality: PSNR, SSIM, LPIPS, rFID and codebook usage over an image set."""
from dcae_ext.data.psnr import psnr_per_image
from dcae_ext.eval.metrics import CodebookUsage, MetricUnavailable, build_fid, load_lpips, ssim_per_image

__all__ = ["CodebookUsage", "MetricUnavailable", "build_fid", "load_lpips", "psnr_per_image", "ssim_per_image"]
