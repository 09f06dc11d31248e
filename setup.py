"""Think-Then-Embed: universal multimodal embeddings that reason before they embed (arXiv 2510.05014)."""

from setuptools import find_packages, setup

setup(
    name="think-then-embed",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    py_modules=["configuration_tte", "modeling_tte", "processing_tte", "prompts_tte", "sentence_tte"],
    packages=find_packages(include=["train", "train.*", "eval", "eval.*"]),
    package_data={"train": ["recipes/*.yaml", "recipes/accelerate/*.yaml"], "eval": ["*.yaml", "*.json"],
                  "eval.mmeb": ["*.json"], "eval.synthetic": ["*.yaml"]},
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "transformers>=5.20,<6",
        "trl>=1.10",
        "peft>=0.17",
        "datasets>=4.0",
        "accelerate>=1.10",
        "huggingface-hub>=1.0",
        "pillow>=10",
        "pyyaml>=6",
    ],
    extras_require={
        "serving": ["transformers[serving]>=5.20,<6", "openai>=1.0"],
        "video": ["av>=12"],  # video files (.mp4, ...) in processor rows, read by transformers' load_video
        "st": ["sentence-transformers>=6.3,<7"],
        "mteb": ["mteb>=2.26,<3", "sentence-transformers>=6.3,<7"],
        "dev": ["pytest>=8", "ruff>=0.6", "transformers[serving]>=5.20,<6", "openai>=1.0", "av>=12",
                "sentence-transformers>=6.3,<7", "mteb>=2.26,<3"],
    },
)
