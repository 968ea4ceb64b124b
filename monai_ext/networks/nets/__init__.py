from monai_ext.networks.nets.autoencoderkl import AutoencoderKL
from monai_ext.networks.nets.hybrid_axial_unet import HybridAxialUNet
from monai_ext.networks.nets.medt import AxialEncoderDecoder, GatedAxialUNet, MedT

__all__: list[str] = ["AutoencoderKL", "AxialEncoderDecoder", "GatedAxialUNet", "HybridAxialUNet", "MedT"]
