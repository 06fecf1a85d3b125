"""ditlab.diffusion"""
