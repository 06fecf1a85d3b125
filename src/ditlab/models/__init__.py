"""ditlab.models"""
