"""The libvirt adapter: the only part of the product that imports libvirt.

`host.LibvirtHost` implements `pools.hypervisor.Hypervisor` on `connection` (one
connection per thread, libvirt errors as the project's), `storage` (image and disk
volumes) and `domain_xml` (the domain document, built and read without libvirt).
"""
