"""ditlab.interop"""
