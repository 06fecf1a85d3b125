"""ditlab.autoencoders"""
