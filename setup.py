from setuptools import setup, find_packages

setup(
    name='stylegan2-fair',
    version='0.1.0',
    description='Fairness and coverage methods for StyleGAN2-ADA training (Inclusive GAN, '
                'Self-Diagnosing GAN, model rebalancing), compatible with official checkpoints.',
    packages=find_packages(include=['stylegan2_fair', 'stylegan2_fair.*', 'training_hooks', 'training_hooks.*']),
    package_data={'stylegan2_fair': ['ops/cuda/*.cu', 'ops/cuda/*.cpp', 'ops/cuda/*.h', 'ops/cuda/*.cuh']},
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.0',
        'numpy>=1.22',
        'click>=8.0',
        'ninja>=1.10',
        'pillow>=9.0',
        'tqdm>=4.60',
        'scipy>=1.8',
        'matplotlib>=3.5',
        'scikit-learn>=1.0',
        'lpips>=0.1.4',
        'psutil>=5.8',
    ],
    extras_require={
        'deepface': ['deepface>=0.0.93'],
        'tensorboard': ['tensorboard>=2.10'],
        'nriqa': ['piq>=0.8'],
        'lsun': ['lmdb>=1.0'],
        'face': ['opencv-python-headless>=4.5,<5'],  # rebalance --gate=face (OpenCV 5 dropped Haar cascades)
        'video': ['imageio>=2.9', 'imageio-ffmpeg>=0.4'],  # projector.py --save-video
        'test': ['pytest>=7.0'],
    },
    entry_points={'console_scripts': ['stylegan2-fair=stylegan2_fair.cli.main:main']},
)
