"""ditlab.training"""
