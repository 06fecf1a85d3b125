"""ditlab.data"""
