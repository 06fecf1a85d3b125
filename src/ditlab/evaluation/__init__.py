"""ditlab.evaluation"""
