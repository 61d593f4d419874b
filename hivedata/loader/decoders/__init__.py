"""Who decodes: native (C++ libjpeg-turbo), pillow (Pillow / Pillow-SIMD) or dali (NVIDIA DALI)."""
