/*
 * tracekit sample guest: a bare-metal AArch64 program for QEMU `-M virt -cpu cortex-a57`,
 * loaded with `-kernel guest.elf`, entered at EL1 with the MMU and caches off.
 *
 * It creates, on purpose, the cache-coherency situations tracekit analyses (see
 * ../README.md for the expected findings, step by step). Every address is a constant and
 * the guest identity-maps memory (VA == PA), so the physical addresses printed by QEMU's
 * execlog plugin are the addresses used below.
 *
 * Rules this file keeps so that the recording stays easy to read:
 *  - no stack, no calls except into the two code slots (bl/blr only use x30);
 *  - every system-register value is built with movz/movk immediates right before its
 *    `msr`, so the value is visible in the disassembly column of the execlog;
 *  - one data access per cache line touched, 8 bytes (4 for the descriptors' 32-bit
 *    fields, the code slots and the UART), so that one load/store in the log is one
 *    event on one 64-byte line;
 *  - all accesses aligned (with the MMU off every data access is Device-nGnRnE, where
 *    unaligned accesses fault).
 */

/* ---- memory map (guest-physical == guest-virtual) --------------------------------- */
        .equ RAM_BASE,      0x40000000
        .equ CODE_BASE,     0x40200000      /* this program (2 MiB block 1, WB)          */

        .equ BOOTBUF_A,     0x40400000      /* block 2 (WB): written with the MMU off,     */
        .equ BOOTBUF_B,     0x40400100      /*   A: "flushed" by set/way only, B: DC IVAC  */

        .equ WBBUF,         0x40600000      /* block 3 (WB): cleaned by VA (CVAC/CIVAC)    */
        .equ DISCARDBUF,    0x40600100      /*   written WB, then DC IVAC without a clean  */
        .equ DESC3,         0x40600200      /*   fw_cfg DMA #3 descriptor (WB)             */
        .equ TARGET3,       0x40600240      /*   fw_cfg DMA #3 target, 64 bytes (WB)       */
        .equ SLOT_OK,       0x40600400      /*   code slot, written + DC CVAU + IC IVAU    */
        .equ SLOT_BAD,      0x40600440      /*   code slot, written, no IC IVAU            */

        .equ NCBLOCK,       0x40800000      /* block 4: Normal Non-cacheable (MAIR idx 2)  */
        .equ DESC1,         0x40800000      /*   fw_cfg DMA #1 descriptor (NC)             */
        .equ TARGET1,       0x40800040      /*   fw_cfg DMA #1 target, 128 bytes (NC)      */
        .equ DESC2,         0x408000c0      /*   fw_cfg DMA #2 descriptor (NC)             */
        .equ TARGET2,       0x40800100      /*   fw_cfg DMA #2 target, 64 bytes (NC)       */

        .equ UART_DR,       0x09000000      /* PL011 data register                         */
        .equ FWCFG_DMA,     0x09020010      /* fw_cfg DMA address register (big-endian)    */

/* fw_cfg DMA control word: key << 16 | SELECT (0x08) | READ (0x02); key 0x0019 = the
 * fw_cfg file directory (a 4-byte count followed by 64-byte entries), so a READ of
 * 64 or 128 bytes always has data to copy. */
        .equ FW_CFG_FILE_DIR, 0x0019
        .equ DMA_CTL_READ_DIR, (FW_CFG_FILE_DIR << 16) | 0x08 | 0x02

/* ---- system-register values ------------------------------------------------------ */
        /* SCTLR_EL1 RES1 bits (11, 20, 22, 23, 28, 29); M = bit 0, C = bit 2, I = bit 12 */
        .equ SCTLR_OFF,     0x30d00800
        .equ SCTLR_ON,      0x30d01805      /* SCTLR_OFF | M | C | I                       */
        /* MAIR_EL1: idx0 0x00 Device-nGnRnE, idx1 0xff Normal WB, idx2 0x44 Normal NC     */
        .equ MAIR_VALUE,    0x000000000044ff00
        /* TCR_EL1: T0SZ=25 (39-bit VA, walk starts at level 1, 4 KiB granule),
         * IRGN0=ORGN0=WB-WA (01), SH0=inner (11), EPD1=1 (no TTBR1 walks), IPS=40 bits */
        .equ TCR_VALUE,     (25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32))

/* movq REG, IMM: movz + movk of the non-zero 16-bit chunks (always at least the movz) */
        .macro movq reg, val
        movz    \reg, #((\val) & 0xffff)
        .if (((\val) >> 16) & 0xffff)
        movk    \reg, #(((\val) >> 16) & 0xffff), lsl #16
        .endif
        .if (((\val) >> 32) & 0xffff)
        movk    \reg, #(((\val) >> 32) & 0xffff), lsl #32
        .endif
        .if (((\val) >> 48) & 0xffff)
        movk    \reg, #(((\val) >> 48) & 0xffff), lsl #48
        .endif
        .endm

/* fw_cfg DMA READ of LEN bytes of the file directory into TARGET, descriptor at DESC.
 * FWCfgDmaAccess is { be32 control; be32 length; be64 address }. The 8-byte big-endian
 * write of the descriptor's address to FWCFG_DMA makes QEMU run the whole transfer
 * synchronously inside that MMIO write: it reads the descriptor, writes LEN bytes at
 * TARGET and writes 0 (done, no error) into the descriptor's control word. */
        .macro fwcfg_dma_write_desc desc, target, len
        movq    x1, \desc
        movq    x2, DMA_CTL_READ_DIR
        rev     w2, w2
        str     w2, [x1]                    /* desc.control (4 bytes)                   */
        movq    x3, \len
        rev     w3, w3
        str     w3, [x1, #4]                /* desc.length  (4 bytes)                   */
        movq    x4, \target
        rev     x4, x4
        str     x4, [x1, #8]                /* desc.address (8 bytes)                   */
        .endm

        .macro fwcfg_dma_kick desc
        movq    x5, FWCFG_DMA
        movq    x6, \desc
        rev     x6, x6
        str     x6, [x5]                    /* MMIO: QEMU performs the DMA here          */
        .endm

        .section .text.boot, "ax"
        .global _start
_start:
        msr     daifset, #0xf

/* ===== phase boot: MMU off, data accesses are Device-nGnRnE ========================= */
        movq    x0, SCTLR_OFF
        msr     sctlr_el1, x0               /* state it explicitly: M=0 C=0 I=0          */
        isb

        movq    x2, 0x1111111111111111
        movq    x1, BOOTBUF_A
        str     x2, [x1]                    /* A line 0 (MMU off)                       */
        str     x2, [x1, #0x40]             /* A line 1 (MMU off)                       */
        movq    x2, 0x2222222222222222
        movq    x1, BOOTBUF_B
        str     x2, [x1]                    /* B line 0 (MMU off)                       */
        str     x2, [x1, #0x40]             /* B line 1 (MMU off)                       */

        dc      ivac, x1                    /* B: invalidate both lines by VA            */
        add     x3, x1, #0x40
        dc      ivac, x3
        dsb     sy

        /* "flush the caches" by set/way, level 1 (the L1 D-cache of a Cortex-A57 has
         * 2 ways of 256 sets of 64 bytes: way in bit 31, set from bit 6, level in 3:1).
         * Only a few sets: the coherence model gives set/way no coherency effect at all,
         * so the count does not matter, and the log stays small. */
        movz    x0, #0
        dc      cisw, x0                    /* way 0, set 0                              */
        movz    x0, #0x8000, lsl #16
        dc      cisw, x0                    /* way 1, set 0                              */
        movz    x0, #0x40
        dc      csw, x0                     /* way 0, set 1                              */
        movz    x0, #0x80
        dc      isw, x0                     /* way 0, set 2                              */
        dsb     sy

/* ===== MMU and caches on ============================================================= */
        movq    x0, MAIR_VALUE
        msr     mair_el1, x0
        movq    x0, TCR_VALUE
        msr     tcr_el1, x0
        adrp    x0, pt_l1                   /* page-aligned table: adrp gives its address */
        msr     ttbr0_el1, x0
        isb
        tlbi    vmalle1
        dsb     ish
        isb
        movq    x0, SCTLR_ON
        msr     sctlr_el1, x0               /* M | C | I                                 */
        isb

/* ===== phase mmu-on ================================================================== */
        /* read back the boot buffers through the Write-Back mapping */
        movq    x1, BOOTBUF_A
        ldr     x10, [x1]                   /* A line 0: stale (set/way is no invalidate) */
        ldr     x11, [x1, #0x40]            /* A line 1: stale                           */
        movq    x1, BOOTBUF_B
        ldr     x12, [x1]                   /* B line 0: fine (DC IVAC after the write)  */
        ldr     x13, [x1, #0x40]            /* B line 1: fine                            */

        /* Write-Back buffer, cleaned by VA */
        movq    x2, 0x3333333333333333
        movq    x1, WBBUF
        str     x2, [x1]
        str     x2, [x1, #0x40]
        dc      cvac, x1
        add     x3, x1, #0x40
        dc      civac, x3
        dsb     sy

        /* Write-Back write, then DC IVAC with no clean: the write may be discarded
         * (bare metal); a KVM guest's DC IVAC is upgraded to DC CIVAC (HCR_EL2.VM). */
        movq    x2, 0x4444444444444444
        movq    x1, DISCARDBUF
        str     x2, [x1]
        dc      ivac, x1
        dsb     sy
        ldr     x14, [x1]

/* ----- fw_cfg DMA #1: Non-cacheable descriptor and buffer, no cache maintenance ------- */
        movq    x1, TARGET1
        str     xzr, [x1]                   /* clear target line 0 (NC)                  */
        str     xzr, [x1, #0x40]            /* clear target line 1 (NC)                  */
        fwcfg_dma_write_desc DESC1, TARGET1, 128
        dsb     sy
        fwcfg_dma_kick DESC1
        ldr     w7, [x1]                    /* poll desc.control (NC): expect 0          */
        movq    x1, TARGET1
        ldr     x15, [x1]                   /* DMA data, line 0 (NC)                     */
        ldr     x16, [x1, #0x40]            /* DMA data, line 1 (NC)                     */

/* ----- fw_cfg DMA #2: Non-cacheable, with the streaming-DMA cache maintenance -------- */
        fwcfg_dma_write_desc DESC2, TARGET2, 64
        dc      civac, x1                   /* x1 = DESC2: descriptor out of the caches  */
        dsb     sy
        fwcfg_dma_kick DESC2
        dc      civac, x1                   /* before reading what the device wrote      */
        movq    x8, TARGET2
        dc      civac, x8
        dsb     sy
        ldr     w7, [x1]                    /* desc.control (NC)                         */
        ldr     x17, [x8]                   /* DMA data (NC)                             */

/* ----- fw_cfg DMA #3: Write-Back descriptor and buffer (coherent with the host) ------ */
        fwcfg_dma_write_desc DESC3, TARGET3, 64
        dsb     sy
        fwcfg_dma_kick DESC3
        ldr     w7, [x1]                    /* desc.control (WB)                         */
        movq    x8, TARGET3
        ldr     x18, [x8]                   /* DMA data (WB)                             */

/* ----- code written at run time (instruction-cache maintenance) --------------------- */
        movq    x2, 0xd65f03c0              /* the encoding of `ret`                      */
        movq    x1, SLOT_OK
        str     w2, [x1]
        dc      cvau, x1                    /* clean to PoU ...                          */
        dsb     ish
        ic      ivau, x1                    /* ... then invalidate the I-cache line      */
        dsb     ish
        isb
        blr     x1                          /* executes the fresh `ret`: fine            */

        movq    x1, SLOT_BAD
        str     w2, [x1]
        dsb     ish
        isb
        blr     x1                          /* no IC IVAU: may execute stale bytes       */

/* ----- say goodbye on the UART, then PSCI SYSTEM_OFF (QEMU exits) ------------------- */
        movq    x1, UART_DR
        movz    w2, #'t'
        str     w2, [x1]
        movz    w2, #'k'
        str     w2, [x1]
        movz    w2, #'\n'
        str     w2, [x1]

        movq    x0, 0x84000008              /* PSCI_SYSTEM_OFF (SMCCC fast call, 32-bit) */
        hvc     #0
1:      wfi                                 /* not reached */
        b       1b

/* ===== translation tables (4 KiB granule, 39-bit VA, identity map) =================== */
/* Descriptor bits: [1:0] 01 block / 11 table; AttrIndx [4:2]; SH [9:8]; AF bit 10;
 * PXN bit 53, UXN bit 54. */
        .equ PTE_BLOCK,     0x1
        .equ PTE_TABLE,     0x3
        .equ PTE_AF,        (1 << 10)
        .equ PTE_SH_INNER,  (3 << 8)
        .equ PTE_XN,        (3 << 53)
        .equ ATTR_DEVICE,   (0 << 2)
        .equ ATTR_WB,       (1 << 2)
        .equ ATTR_NC,       (2 << 2)

        .section .data.pagetables, "aw"
        .balign 4096
pt_l1:
        /* 0 - 1 GiB: Device-nGnRnE, never executable (UART, fw_cfg, GIC, flash...) */
        .quad   0x00000000 | PTE_BLOCK | PTE_AF | ATTR_DEVICE | PTE_XN
        /* 1 - 2 GiB: RAM, through the level-2 table */
        .quad   pt_l2 + PTE_TABLE
        .fill   510, 8, 0

        .balign 4096
pt_l2:
        /* 2 MiB blocks from 0x40000000: Normal WB inner-shareable, except block 4
         * (0x40800000 - 0x409fffff) Normal Non-cacheable */
        .set    blk, 0
        .rept   512
        .if     blk == 4
        .quad   (RAM_BASE + blk * 0x200000) | PTE_BLOCK | PTE_AF | PTE_SH_INNER | ATTR_NC
        .else
        .quad   (RAM_BASE + blk * 0x200000) | PTE_BLOCK | PTE_AF | PTE_SH_INNER | ATTR_WB
        .endif
        .set    blk, blk + 1
        .endr
