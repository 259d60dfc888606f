"""Datasets: conversion to .beton, image reading, loaders, the generated dataset."""
